"""The client against the real emulator over loopback (uvicorn on 127.0.0.1, free port)."""

from __future__ import annotations

import gc
import logging
import sys
from typing import TYPE_CHECKING

import msgspec
import pytest

from pipeline._errors import (
    AuthenticationError,
    BadRequestError,
    NotFoundError,
    RequestTooLargeError,
    ResultStreamError,
)
from pipeline.api import SplicedBody
from pipeline.api._client import Client
from pipeline.api._types import (
    CanceledResult,
    ErroredResult,
    MessageBatch,
    SucceededResult,
)
from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "claude-3-haiku-20240307"
KEY = "sk-ant-emulator-test-key"


def body(count: int, prefix: str = "r", *, bad: set[int] | None = None) -> bytes:
    lines = []
    for n in range(count):
        params: dict[str, object] = {
            "model": MODEL,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": f"question {n}"}],
        }
        if bad and n in bad:
            params["messages"] = [{"role": "robot", "content": "x"}]
        lines.append(msgspec.json.encode({"custom_id": f"{prefix}{n}", "params": params}))
    return b'{"requests":[' + b",".join(lines) + b"]}"


async def no_sleep(delay: float) -> None:
    pass


def client_at(url: str, **kwargs: object) -> Client:
    options: dict[str, object] = {"api_key": KEY, "sleep": no_sleep, "max_retries": 2}
    options.update(kwargs)
    return Client(base_url=url, **options)  # type: ignore[arg-type]


async def wait_ended(client: Client, batch: MessageBatch) -> MessageBatch:
    for _ in range(200):
        batch = await client.retrieve_batch(batch.id)
        if batch.processing_status == "ended":
            return batch
    raise AssertionError(f"{batch.id} did not end")


async def test_batch_life_cycle_and_results(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)  # httpx and httpcore log every step at DEBUG
    async with (
        serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path) as emu,
        client_at(emu.url) as client,
    ):
        created = await client.create_batch(body(5, bad={3}), request_count=5)
        assert created.processing_status == "in_progress"
        assert created.request_counts.processing == 5
        assert created.results_url is None
        ended = await wait_ended(client, created)
        assert ended.request_counts.succeeded == 4
        assert ended.request_counts.errored == 1
        assert ended.results_url is not None
        assert ended.results_url.startswith(emu.url)

        results = {r.custom_id: r.result async for r in client.results(ended)}
        assert set(results) == {f"r{n}" for n in range(5)}
        ok = results["r0"]
        assert isinstance(ok, SucceededResult)
        assert ok.message.usage.output_tokens >= 1
        bad = results["r3"]
        assert isinstance(bad, ErroredResult)
        assert bad.error.error.type == "invalid_request_error"

        lines = [line async for chunk in client.results_lines(ended) for line in chunk]
        assert len(lines) == 5
        assert all(line.startswith(b"{") and not line.endswith(b"\r") for line in lines)

        deleted = await client.delete_batch(ended.id)
        assert deleted.id == ended.id
        with pytest.raises(NotFoundError) as info:
            await client.retrieve_batch(ended.id)
        assert info.value.error_type == "not_found_error"
        assert emu.submissions() == {f"r{n}": 1 for n in range(5)}
    assert caplog.records
    assert KEY not in caplog.text


async def test_a_create_body_is_freed_without_the_cyclic_gc(tmp_path: Path) -> None:
    # httpx keeps each request in a reference cycle (PERFORMANCE.md): a body it held
    # would stay alive, several MB per create, until the cyclic GC ran
    data = body(200)
    async with (
        serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path) as emu,
        client_at(emu.url, collect_after_create=False) as client,
    ):
        before = sys.getrefcount(data)
        gc.disable()
        try:
            created = await client.create_batch(data, request_count=200)
            after = sys.getrefcount(data)
        finally:
            gc.enable()
        assert created.request_counts.processing == 200
        assert after == before
        assert emu.submissions() == {f"r{n}": 1 for n in range(200)}


def request_line(n: int, *, pad: int = 0) -> bytes:
    text = f"question {n} " + "x" * pad
    params = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}
    return msgspec.json.encode({"custom_id": f"r{n}", "params": params})


@pytest.mark.parametrize("piece_bytes", [1, 100, 1 << 20])
@pytest.mark.parametrize("count", [0, 1, 2, 7])
def test_a_spliced_body_is_the_joined_body_in_pieces(count: int, piece_bytes: int) -> None:
    lines = [request_line(n, pad=n * 10) for n in range(count)]
    spliced = SplicedBody(lines, piece_bytes)
    joined = b'{"requests":[' + b",".join(lines) + b"]}"
    assert b"".join(spliced.pieces()) == joined
    assert bytes(spliced) == joined  # and again: a retried create sends it anew
    assert len(spliced) == spliced.size == len(joined)


async def test_list_pages_and_cancel(tmp_path: Path) -> None:
    clock = ManualClock()
    config = EmulatorConfig(batch_seconds=3600.0, cancel_seconds=0.0, clock=clock)
    async with (
        serve_emulator(config, data_dir=tmp_path) as emu,
        client_at(emu.url) as client,
    ):
        ids = []
        for n in range(7):
            batch = await client.create_batch(body(2, prefix=f"b{n}_"), request_count=2)
            ids.append(batch.id)
            clock.advance(1.0)
        newest_first = ids[::-1]
        assert [b.id async for b in client.list_batches(limit=3)] == newest_first
        page = await client.list_batches_page(limit=2)
        assert [b.id for b in page.data] == newest_first[:2]
        assert page.has_more
        older = [b.id async for b in client.list_batches(limit=2, after_id=newest_first[1])]
        assert older == newest_first[2:]

        with pytest.raises(BadRequestError):
            await client.delete_batch(ids[0])  # still in progress
        canceling = await client.cancel_batch(ids[0])
        assert canceling.processing_status in {"canceling", "ended"}
        assert canceling.cancel_initiated_at is not None
        ended = await wait_ended(client, canceling)
        assert ended.request_counts.canceled == 2
        kinds = [type(r.result) async for r in client.results(ended)]
        assert kinds == [CanceledResult, CanceledResult]


async def test_cut_download_raises_result_stream_error(tmp_path: Path) -> None:
    config = EmulatorConfig(batch_seconds=0.0, cut_rate=1.0)
    async with (
        serve_emulator(config, data_dir=tmp_path) as emu,
        client_at(emu.url) as client,
    ):
        created = await client.create_batch(body(300), request_count=300)
        ended = await wait_ended(client, created)
        got: list[bytes] = []
        with pytest.raises(ResultStreamError) as info:
            await collect_lines(client, ended, got)
        assert info.value.batch_id == ended.id
        assert len(got) < 300
        for line in got:  # every yielded line is complete
            msgspec.json.decode(line)


async def collect_lines(client: Client, batch: MessageBatch, into: list[bytes]) -> None:
    async for lines in client.results_lines(batch):
        into.extend(lines)


async def test_errors_from_the_emulator(tmp_path: Path) -> None:
    config = EmulatorConfig(batch_seconds=0.0, max_batch_bytes=10_000)
    async with serve_emulator(config, data_dir=tmp_path) as emu:
        async with client_at(emu.url) as client:
            with pytest.raises(RequestTooLargeError) as too_big:
                await client.create_batch(body(200), request_count=200)
            assert too_big.value.status_code == 413
            with pytest.raises(BadRequestError):
                await client.create_batch(b'{"requests":[]}', request_count=0)
            with pytest.raises(NotFoundError):
                await client.retrieve_batch("msgbatch_nope")
        async with client_at(emu.url, api_key=None) as anonymous:
            with pytest.raises(AuthenticationError) as info:
                await anonymous.list_batches_page()
            assert info.value.status_code == 401
        assert emu.state.batches() == []


async def test_messages_and_count_tokens(tmp_path: Path) -> None:
    params = msgspec.json.encode(
        {"model": MODEL, "max_tokens": 32, "messages": [{"role": "user", "content": "hello"}]}
    )
    async with (
        serve_emulator(EmulatorConfig(), data_dir=tmp_path) as emu,
        client_at(emu.url, beta=True) as client,
    ):
        message = await client.create_message(params)
        again = await client.create_message(params)
        assert message.content == again.content  # the fake model is deterministic
        assert message.usage.input_tokens > 0
        count = await client.count_tokens(
            msgspec.json.encode(
                {"model": MODEL, "messages": [{"role": "user", "content": "hello"}]}
            )
        )
        assert count > 0


async def test_fault_injection_is_retried_away(tmp_path: Path) -> None:
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    config = EmulatorConfig(batch_seconds=0.0, fault_rate=0.5, seed=7)
    async with (
        serve_emulator(config, data_dir=tmp_path) as emu,
        client_at(emu.url, sleep=sleep, max_retries=30) as client,
    ):
        for _ in range(10):
            await client.list_batches_page()
    assert client.retries == len(delays) > 0
