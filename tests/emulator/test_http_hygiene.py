"""The emulator's HTTP hygiene (issue 14): slow or idle clients cannot hold a socket
forever, what the headers alone decide is answered before the body is read, and a
body that is not UTF-8 JSON, or nested too deeply, is the service's 400."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline.testing import EmulatorConfig, serve_emulator, start_emulator_process

from .conftest import VERSION, asgi_client, params

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import SocketStream

    from pipeline.emulator import EmulatorApp

#: Upper bound of every wait below: the server must act long before it.
BOUND = 15.0


async def connect(url: str) -> SocketStream:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return await anyio.connect_tcp(host, int(port))


async def closed_by_server(stream: SocketStream) -> bool:
    """True once the server closes the connection (within BOUND seconds)."""
    with anyio.fail_after(BOUND):
        try:
            while await stream.receive():
                pass
        except (anyio.EndOfStream, anyio.BrokenResourceError):
            return True
    return False


async def status_of(stream: SocketStream) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of the answer (within BOUND seconds)."""
    data = b""
    with anyio.fail_after(BOUND):
        while b"\r\n\r\n" not in data:
            data += await stream.receive()
        head, _, body = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(body) < length:
            body += await stream.receive()
    return int(head.split(b" ")[1]), msgspec.json.decode(body)


@pytest.mark.parametrize(
    "sent",
    [
        pytest.param(b"", id="idle"),
        pytest.param(
            b"POST /v1/messages HTTP/1.1\r\nHost: x\r\nx-api-key: k\r\n", id="slow-headers"
        ),
    ],
)
async def test_a_slow_or_idle_client_is_disconnected(sent: bytes) -> None:
    config = EmulatorConfig(header_timeout_seconds=0.5)
    async with serve_emulator(config) as emu:
        stream = await connect(emu.url)
        async with stream:
            if sent:
                await stream.send(sent)
            assert await closed_by_server(stream)


async def test_an_idle_keep_alive_connection_is_closed() -> None:
    async with serve_emulator(EmulatorConfig(keep_alive_seconds=1)) as emu:
        stream = await connect(emu.url)
        async with stream:
            await stream.send(b"GET /_emulator/health HTTP/1.1\r\nHost: x\r\n\r\n")
            status, body = await status_of(stream)
            assert (status, body) == (200, {"ok": True})
            assert await closed_by_server(stream)


@pytest.mark.parametrize(
    ("headers", "status", "needle"),
    [
        pytest.param(b"anthropic-version: 2023-06-01\r\n", 401, "API key", id="no-key"),
        pytest.param(b"x-api-key: k\r\n", 400, "anthropic-version", id="no-version"),
        pytest.param(
            b"x-api-key: k\r\nanthropic-version: 2023-06-01\r\ncontent-type: text/plain\r\n",
            400,
            "content-type",
            id="not-json",
        ),
    ],
)
async def test_what_the_headers_decide_is_answered_before_the_body(
    headers: bytes, status: int, needle: str
) -> None:
    """A 32 MB create announced, 1 KiB sent: the answer comes without the rest."""
    async with serve_emulator() as emu:
        stream = await connect(emu.url)
        async with stream:
            await stream.send(
                b"POST /v1/messages/batches HTTP/1.1\r\nHost: x\r\n"
                + headers
                + b"content-length: 33554432\r\n\r\n"
                + b"[" * 1024
            )
            got, body = await status_of(stream)
    assert got == status
    assert needle in body["error"]["message"]


@pytest.mark.parametrize("path", ["/v1/messages", "/v1/messages/batches"])
async def test_a_body_that_is_not_utf8_is_refused(
    make_app: Callable[..., EmulatorApp], path: str
) -> None:
    request = msgspec.json.encode(params("caf\u00e9")).replace("é".encode(), b"\xe9")
    body = (
        request
        if path == "/v1/messages"
        else b'{"requests":[{"custom_id":"a","params":%s}]}' % request
    )
    async with asgi_client(make_app()) as client:
        answer = await client.post(path, content=body)
    assert answer.status_code == 400, answer.text
    assert answer.json()["error"]["type"] == "invalid_request_error"
    assert "UTF-8" in answer.json()["error"]["message"]


@pytest.mark.parametrize("where", ["params", "body"])
async def test_a_deeply_nested_body_is_a_400_not_a_500(
    make_app: Callable[..., EmulatorApp], where: str
) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    entry = msgspec.json.encode(params()).replace(
        b'"max_tokens"', b'"metadata":' + deep + b',"max_tokens"'
    )
    bodies = {
        "/v1/messages/batches": (
            b'{"requests":[{"custom_id":"a","params":%s}]}' % entry if where == "params" else deep
        ),
        "/v1/messages": entry if where == "params" else deep,
    }
    async with asgi_client(make_app()) as client:
        for path, body in bodies.items():
            answer = await client.post(path, content=body)
            assert answer.status_code == 400, (path, answer.text)
            assert answer.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("content_type", "ok"),
    [
        ("application/json", True),
        ("application/json; charset=utf-8", True),
        ('Application/JSON;charset="UTF-8"', True),
        ("text/plain", False),
        ("application/x-www-form-urlencoded", False),
        ("application/json; charset=latin-1", False),
    ],
)
async def test_content_type_must_be_json(
    make_app: Callable[..., EmulatorApp], content_type: str, ok: bool
) -> None:
    async with asgi_client(make_app()) as client:
        answer = await client.post(
            "/v1/messages",
            content=msgspec.json.encode(params()),
            headers={"content-type": content_type},
        )
    assert (answer.status_code == 200) is ok, answer.text
    if not ok:
        assert answer.status_code == 400
        assert "content-type" in answer.json()["error"]["message"]


async def test_a_malformed_anthropic_version_is_refused(
    make_app: Callable[..., EmulatorApp],
) -> None:
    async with asgi_client(make_app()) as client:
        answer = await client.get("/v1/models", headers={"anthropic-version": "latest"})
        assert answer.status_code == 400
        assert "anthropic-version" in answer.json()["error"]["message"]
        assert (await client.get("/v1/models", headers={"anthropic-version": VERSION})).is_success


async def test_the_command_line_sets_the_timeouts() -> None:
    with start_emulator_process("--header-timeout", "0.5", "--keep-alive", "1") as url:
        idle = await connect(url)
        async with idle:
            assert await closed_by_server(idle)
        used = await connect(url)
        async with used:
            await used.send(b"GET /_emulator/health HTTP/1.1\r\nHost: x\r\n\r\n")
            assert (await status_of(used))[0] == 200
            assert await closed_by_server(used)
