"""Results streaming and list pagination against ``httpx.MockTransport``."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import httpx
import msgspec
import pytest

from pipeline._errors import NotFoundError, ResultStreamError, UsageError
from pipeline.api._client import Client
from pipeline.api._lines import split_block
from pipeline.api._types import (
    CanceledResult,
    ErroredResult,
    ExpiredResult,
    MessageBatch,
    RequestCounts,
    SucceededResult,
    error_body,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

KEY = "sk-ant-results-key"


def batch(batch_id: str = "msgbatch_1", results_url: str | None = "/r/1") -> MessageBatch:
    return MessageBatch(
        id=batch_id,
        processing_status="ended" if results_url else "in_progress",
        request_counts=RequestCounts(succeeded=1),
        created_at="2024-09-24T18:37:24Z",
        expires_at="2024-09-25T18:37:24Z",
        results_url=results_url,
    )


def batch_json(batch_id: str) -> dict[str, object]:
    return msgspec.to_builtins(batch(batch_id))  # type: ignore[no-any-return]


class Body(httpx.AsyncByteStream):
    """A streamed response body whose chunks are given, optionally broken at the end."""

    def __init__(self, chunks: list[bytes], error: Exception | None = None) -> None:
        self.chunks = chunks
        self.error = error
        self.sent = 0
        self.closed = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            self.sent += 1
            yield chunk
        if self.error is not None:
            raise self.error

    async def aclose(self) -> None:
        self.closed = True


async def collect(stream: AsyncIterator[list[bytes]], into: list[bytes]) -> None:
    async for lines in stream:
        into.extend(lines)


async def collect_blocks(stream: AsyncIterator[bytes], into: list[bytes]) -> None:
    async for block in stream:
        into.extend(split_block(block))


async def no_sleep(delay: float) -> None:
    pass


def client_for(handler: httpx.MockTransport, **kwargs: object) -> Client:
    options: dict[str, object] = {"sleep": no_sleep, "collect_after_create": False}
    options.update(kwargs)
    return Client(api_key=KEY, base_url="https://api.test", transport=handler, **options)  # type: ignore[arg-type]


LINES = [
    b'{"custom_id":"a","result":{"type":"succeeded","message":{"id":"msg_1","type":"message",'
    b'"role":"assistant","model":"m","content":[{"type":"text","text":"hi"}],'
    b'"stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":1,"output_tokens":2}}}}',
    b'{"custom_id":"b","result":{"type":"errored","error":{"type":"error","error":'
    b'{"type":"invalid_request_error","message":"bad"},"request_id":null}}}',
    b'{"custom_id":"c","result":{"type":"canceled"}}',
    b'{"custom_id":"d","result":{"type":"expired"}}',
]


async def test_results_lines_chunks_crlf_and_headers() -> None:
    data = b"\r\n".join(LINES) + b"\r\n"
    chunks = [data[i : i + 37] for i in range(0, len(data), 37)]
    body = Body(chunks)
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(200, stream=body)

    async with client_for(httpx.MockTransport(handler)) as client:
        got = [lines async for lines in client.results_lines(batch())]
    assert all(got), "no empty lists are yielded"
    assert [line for lines in got for line in lines] == LINES
    assert body.closed
    (request,) = seen
    assert str(request.url) == "https://api.test/r/1"
    assert request.headers["accept"] == "application/binary"
    assert request.headers["x-api-key"] == KEY


async def test_results_blocks_gather_chunks_into_blocks_of_the_same_lines() -> None:
    data = b"\r\n".join(LINES) + b"\r\n"
    chunks = [data[i : i + 37] for i in range(0, len(data), 37)]
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Body(chunks)))
    async with client_for(transport) as client:
        blocks = [block async for block in client.results_blocks(batch())]
    assert len(blocks) == 1, "small chunks are gathered"
    assert [line for block in blocks for line in split_block(block)] == LINES
    assert blocks[0] == data[:-1], "a block is the bytes as they came"


async def test_a_broken_block_stream_yields_its_whole_lines_first() -> None:
    body = Body([LINES[0] + b"\n" + LINES[1][:20]], httpx.ReadError("reset"))
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    got: list[bytes] = []
    async with client_for(transport) as client:
        with pytest.raises(ResultStreamError, match="ReadError") as info:
            await collect_blocks(client.results_blocks(batch("msgbatch_cut")), got)
    assert got == [LINES[0]], "the whole line is routed, the partial one never"
    assert isinstance(info.value.__cause__, httpx.ReadError)
    assert body.closed


async def test_absolute_results_url_followed_as_given() -> None:
    seen: list[str] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(str(request.url))
        return httpx.Response(200, content=LINES[2])

    async with client_for(httpx.MockTransport(handler)) as client:
        url = "http://other.host:8080/v1/messages/batches/msgbatch_1/results"
        got = [r async for r in client.results(batch(results_url=url))]
    assert seen == [url]
    assert got[0].custom_id == "c"


async def test_results_typed_every_kind() -> None:
    data = b"\n".join(LINES)  # no trailing newline
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=Body([data])))
    async with client_for(transport) as client:
        got = [r async for r in client.results(batch())]
    assert [r.custom_id for r in got] == ["a", "b", "c", "d"]
    first, second, third, fourth = (r.result for r in got)
    assert isinstance(first, SucceededResult)
    assert first.message.usage.output_tokens == 2
    assert isinstance(second, ErroredResult)
    assert second.error.error.type == "invalid_request_error"
    assert isinstance(third, CanceledResult)
    assert isinstance(fourth, ExpiredResult)


async def test_broken_stream_raises_result_stream_error_and_closes() -> None:
    body = Body([LINES[0] + b"\n", LINES[1][:20]], httpx.RemoteProtocolError("peer closed"))
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    got: list[bytes] = []
    async with client_for(transport) as client:
        with pytest.raises(ResultStreamError) as info:
            await collect(client.results_lines(batch("msgbatch_cut")), got)
    assert got == [LINES[0]], "the partial line is never yielded"
    assert info.value.batch_id == "msgbatch_cut"
    assert "RemoteProtocolError" in str(info.value)
    assert isinstance(info.value.__cause__, httpx.RemoteProtocolError)
    assert body.closed
    assert KEY not in str(info.value)


async def test_read_error_mid_body_is_result_stream_error() -> None:
    body = Body([LINES[2] + b"\n"], httpx.ReadError("reset"))
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    async with client_for(transport) as client:
        with pytest.raises(ResultStreamError, match="ReadError"):
            async for _ in client.results(batch()):
                pass


async def test_early_stop_closes_response() -> None:
    body = Body([line + b"\n" for line in LINES])
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    async with client_for(transport) as client:
        stream = client.results_lines(batch())
        first = await stream.__anext__()
        assert first == [LINES[0]]
        assert not body.closed
        await stream.aclose()  # type: ignore[attr-defined]
        assert body.closed
        assert body.sent == 1


async def test_early_stop_of_typed_results_closes_response() -> None:
    bodies: list[Body] = []

    def handler(request: httpx.Request) -> httpx.Response:
        bodies.append(Body([line + b"\n" for line in LINES]))
        return httpx.Response(200, stream=bodies[-1])

    async with client_for(httpx.MockTransport(handler)) as client:
        results = client.results(batch())
        async for _ in results:
            break
        await results.aclose()  # type: ignore[attr-defined]
        assert bodies[0].closed


async def test_results_initial_get_retried_on_error_status() -> None:
    answers = [
        httpx.Response(503, content=b"unavailable"),
        httpx.Response(
            429, content=error_body("rate_limit_error", "slow"), headers={"retry-after": "1"}
        ),
        httpx.Response(200, content=LINES[3]),
    ]
    delays: list[float] = []

    async def sleep(delay: float) -> None:
        delays.append(delay)

    transport = httpx.MockTransport(lambda request: answers.pop(0))
    async with client_for(transport, sleep=sleep, random=lambda: 0.0) as client:
        got = [r.custom_id async for r in client.results(batch())]
    assert got == ["d"]
    assert delays == [0.5, 1.0]


async def test_results_404_raises_typed_error() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            404, content=error_body("not_found_error", "gone"), headers={"request-id": "req_x"}
        )
    )
    async with client_for(transport) as client:
        with pytest.raises(NotFoundError) as info:
            async for _ in client.results_lines(batch()):
                pass
    assert info.value.request_id == "req_x"


async def test_invalid_result_line() -> None:
    transport = httpx.MockTransport(lambda request: httpx.Response(200, content=b'{"x":1}\n'))
    async with client_for(transport) as client:
        with pytest.raises(ResultStreamError, match="invalid result line"):
            async for _ in client.results(batch()):
                pass


async def test_no_results_url() -> None:
    async with client_for(httpx.MockTransport(lambda r: httpx.Response(500))) as client:
        with pytest.raises(UsageError, match="in_progress"):
            client.results_lines(batch(results_url=None))
        ended = msgspec.structs.replace(batch(results_url=None), processing_status="ended")
        with pytest.raises(ResultStreamError, match="no results_url"):
            client.results(ended)


# -- list pagination ----------------------------------------------------------------------


def pages_handler(ids: list[str], seen: list[httpx.QueryParams]) -> httpx.MockTransport:
    """A fake list endpoint over ``ids`` (newest first) with before_id / after_id / limit."""

    def handler(request: httpx.Request) -> httpx.Response:
        params = request.url.params
        seen.append(params)
        limit = int(params.get("limit", "20"))
        if "after_id" in params:
            start = ids.index(params["after_id"]) + 1
            page = ids[start : start + limit]
            has_more = start + limit < len(ids)
        elif "before_id" in params:
            end = ids.index(params["before_id"])
            page = ids[max(0, end - limit) : end]
            has_more = end - limit > 0
        else:
            page = ids[:limit]
            has_more = limit < len(ids)
        body = {
            "data": [batch_json(i) for i in page],
            "has_more": has_more,
            "first_id": page[0] if page else None,
            "last_id": page[-1] if page else None,
        }
        return httpx.Response(200, json=body)

    return httpx.MockTransport(handler)


IDS = [f"msgbatch_{n:02d}" for n in range(10, 0, -1)]  # newest first


async def test_list_walks_after_id() -> None:
    seen: list[httpx.QueryParams] = []
    async with client_for(pages_handler(IDS, seen)) as client:
        got = [b.id async for b in client.list_batches(limit=3)]
    assert got == IDS
    assert [dict(p) for p in seen] == [
        {"limit": "3"},
        {"limit": "3", "after_id": "msgbatch_08"},
        {"limit": "3", "after_id": "msgbatch_05"},
        {"limit": "3", "after_id": "msgbatch_02"},
    ]


async def test_list_walks_before_id() -> None:
    seen: list[httpx.QueryParams] = []
    async with client_for(pages_handler(IDS, seen)) as client:
        got = [b.id async for b in client.list_batches(limit=2, before_id="msgbatch_04")]
    # Pages of newer batches, each newest first, walking towards the newest.
    assert got == [
        "msgbatch_06",
        "msgbatch_05",
        "msgbatch_08",
        "msgbatch_07",
        "msgbatch_10",
        "msgbatch_09",
    ]
    assert [p.get("before_id") for p in seen] == ["msgbatch_04", "msgbatch_06", "msgbatch_08"]
    assert all("after_id" not in p for p in seen)


async def test_list_stops_on_empty_page_even_if_has_more() -> None:
    transport = httpx.MockTransport(
        lambda request: httpx.Response(
            200, json={"data": [], "has_more": True, "first_id": None, "last_id": None}
        )
    )
    async with client_for(transport) as client:
        assert [b async for b in client.list_batches()] == []


async def test_list_page() -> None:
    seen: list[httpx.QueryParams] = []
    async with client_for(pages_handler(IDS, seen)) as client:
        page = await client.list_batches_page(limit=4, after_id="msgbatch_10")
    assert [b.id for b in page.data] == ["msgbatch_09", "msgbatch_08", "msgbatch_07", "msgbatch_06"]
    assert page.has_more
    assert page.first_id == "msgbatch_09"
    assert page.last_id == "msgbatch_06"


async def test_cancel_and_delete() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if request.method == "DELETE":
            return httpx.Response(200, json={"id": "msgbatch_1", "type": "message_batch_deleted"})
        return httpx.Response(200, json=batch_json("msgbatch_1"))

    async with client_for(httpx.MockTransport(handler)) as client:
        canceled = await client.cancel_batch("msgbatch_1")
        deleted = await client.delete_batch("msgbatch_1")
    assert canceled.id == "msgbatch_1"
    assert deleted.id == "msgbatch_1"
    assert deleted.type == "message_batch_deleted"
    assert [(r.method, r.url.path) for r in seen] == [
        ("POST", "/v1/messages/batches/msgbatch_1/cancel"),
        ("DELETE", "/v1/messages/batches/msgbatch_1"),
    ]


class StallingBody(Body):
    """Sends its chunks, then waits forever (until cancelled)."""

    async def __aiter__(self) -> AsyncIterator[bytes]:
        for chunk in self.chunks:
            yield chunk
        await anyio.Event().wait()
        yield b""  # pragma: no cover


async def test_cancelled_consumer_closes_response() -> None:
    body = StallingBody([LINES[0] + b"\n"])
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    got: list[bytes] = []
    async with client_for(transport) as client:
        stream = client.results_lines(batch())
        with anyio.CancelScope() as scope:
            async for lines in stream:
                got.extend(lines)
                scope.cancel()
        assert scope.cancelled_caught
        await stream.aclose()  # type: ignore[attr-defined]
    assert got == [LINES[0]]
    assert body.closed


async def test_cancel_while_waiting_for_a_chunk_closes_response() -> None:
    body = StallingBody([LINES[0] + b"\n"])
    transport = httpx.MockTransport(lambda request: httpx.Response(200, stream=body))
    async with client_for(transport) as client:
        stream = client.results_lines(batch())
        with anyio.move_on_after(0.05):  # the stream stalls after the first line
            async for _ in stream:
                pass
        assert body.closed, "cancelled inside the generator: its finally closed the response"
