"""Source, validate and chunker: sync parsers directly, stages over memory streams."""

from __future__ import annotations

import tracemalloc
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline._config import PipelineConfig
from pipeline.stages._items import Entry, Flush, RawLine, Reject, Watermark
from pipeline.stages._protocol import build_body
from pipeline.stages.chunker import Packer, chunker
from pipeline.stages.source import LineReader, iterable_source, jsonl_source
from pipeline.stages.validate import ALL_REJECTED_WARNING, Validator, validate

if TYPE_CHECKING:
    from pathlib import Path


def good(cid: str, text: str = "hi") -> bytes:
    return msgspec.json.encode(
        {
            "custom_id": cid,
            "params": {
                "model": "claude-3-haiku-20240307",
                "max_tokens": 8,
                "messages": [{"role": "user", "content": text}],
            },
        }
    )


@pytest.mark.parametrize("size", [1, 3, 7, 1 << 20])
def test_line_reader_positions_survive_any_chunking(size: int) -> None:
    data = b'{"a":1}\r\n\n{"b":2}\n{"c":3}'
    reader = LineReader()
    lines: list[RawLine] = []
    for i in range(0, len(data), size):
        lines += reader.feed(data[i : i + size])
    lines += reader.flush()
    assert [(x.line, x.data.rstrip(b"\r"), x.offset) for x in lines] == [
        (1, b'{"a":1}', 0),
        (2, b"", 9),
        (3, b'{"b":2}', 10),
        (4, b'{"c":3}', 18),
    ]


@pytest.mark.parametrize("size", [1, 2, 3, 4, 1 << 20])
def test_a_byte_order_mark_is_not_part_of_line_one(size: int) -> None:
    data = b"\xef\xbb\xbf" + good("a") + b"\n" + good("b") + b"\n"
    reader = LineReader()
    lines: list[RawLine] = []
    for i in range(0, len(data), size):
        lines += reader.feed(data[i : i + size])
    lines += reader.flush()
    assert [(x.line, x.data, x.offset) for x in lines] == [
        (1, good("a"), 3),
        (2, good("b"), 3 + len(good("a")) + 1),
    ]
    assert reader.position == (len(data), 2)
    items = Validator().check(lines)
    assert [x.custom_id for x in items if isinstance(x, Entry)] == ["a", "b"]
    # read on from a checkpoint, nothing is taken for a mark; nor is one later on
    assert LineReader(start_offset=3).feed(b"\xef\xbb\xbfx\n")[0].data == b"\xef\xbb\xbfx"
    assert [x.data for x in LineReader().feed(b"\xef\xbb")] == []


@pytest.mark.parametrize("size", [1, 5, 64, 1 << 20])
def test_a_line_longer_than_a_batch_is_skipped_and_rejected_with_its_position(size: int) -> None:
    # Lines 2 and 4 (323 bytes) are longer than a batch (200). A line that outgrows the
    # limit before its newline comes is not held: its stand-in keeps the custom_id,
    # length and position. One a chunk holds whole is handed over as it is. Either way
    # the validator rejects it, and the positions after it stay right.
    big = good("big-1", "x" * 200)
    data = good("a") + b"\n" + big + b"\n" + good("b") + b"\n" + big
    reader = LineReader(max_line=200)
    lines: list[RawLine] = []
    for i in range(0, len(data), size):
        lines += reader.feed(data[i : i + size])
    lines += reader.flush()
    starts = [0, len(good("a")) + 1]
    starts += [starts[1] + len(big) + 1, starts[1] + len(big) + 1 + len(good("b")) + 1]
    assert [(x.line, x.offset) for x in lines] == list(zip([1, 2, 3, 4], starts, strict=True))
    assert [x.data for x in lines[::2]] == [good("a"), good("b")]
    skipped = size < len(big)
    # the last line has no newline: it stays a tail, always too long to hold
    assert [x.size for x in lines[1::2]] == [len(big) if skipped else -1, len(big)]
    assert reader.position == (len(data), 4)
    validator = Validator(max_batch_bytes=200)
    items = validator.check(lines)
    assert [x.custom_id for x in items if isinstance(x, Entry)] == ["a", "b"]
    rejects = [x for x in items if isinstance(x, Reject)]
    assert [(r.line, r.custom_id, r.error.type) for r in rejects] == [
        (2, "big-1", "request_too_large"),
        (4, "big-1", "request_too_large"),
    ]
    first = "line" if skipped else "entry"
    assert rejects[0].error.message.startswith(f"{first} is {len(big):,} bytes; a batch body")
    assert rejects[0].end == starts[2]  # the next line's start: a resume reads on there
    assert validator.position == (len(data) + 1, 4)  # as for any last line without a newline


def test_a_file_without_newlines_is_not_held_in_memory() -> None:
    # A JSON array passed for JSONL: 64 MiB on one line, read in 1 MiB chunks.
    chunk = b"[" + b'{"custom_id": "x", "params": {}},' * 32_000
    chunk = chunk[: 1 << 20]
    reader = LineReader(max_line=4 << 20)
    tracemalloc.start()
    try:
        for _ in range(64):
            assert reader.feed(chunk) == []
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    [stand_in] = reader.flush()
    assert stand_in.size == 64 * len(chunk)
    assert peak < 12 << 20  # the limit and a chunk or two, not the 64 MiB line


async def test_jsonl_source_resumes_from_a_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"one\ntwo\nthree")
    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    await jsonl_source(send, path=path, start_offset=4, start_line=1, chunk_size=3)
    async with receive:
        got: list[RawLine] = []
        async for chunk in receive:
            got += chunk
    assert [(x.line, x.data, x.offset) for x in got] == [(2, b"two", 4), (3, b"three", 8)]


async def test_jsonl_source_stops_between_chunks(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"x\n" * 100)
    stop = anyio.Event()
    stop.set()
    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    await jsonl_source(send, path=path, chunk_size=4, stop=stop)
    async with receive:
        assert [chunk async for chunk in receive] == []


async def test_iterable_source_takes_sync_and_async_items_and_skips() -> None:
    async def items() -> Any:
        yield {"a": 1}
        yield b'{"b":2}'
        yield {"c": 3}

    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    await iterable_source(send, items=items(), skip=1)
    async with receive:
        got = [line async for chunk in receive for line in chunk]
    assert [(x.line, x.data, x.offset) for x in got] == [(2, b'{"b":2}', -1), (3, b'{"c":3}', -1)]


async def test_iterable_source_does_not_hold_items_while_the_iterator_waits() -> None:
    """A trickling async iterable: each item goes out before the next one exists
    (the next is produced only once the first was received downstream)."""
    taken = anyio.Event()

    async def trickle() -> Any:
        yield {"n": 1}
        await taken.wait()
        yield {"n": 2}

    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    got: list[RawLine] = []
    with anyio.fail_after(5):  # holding item 1 back would wait forever
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: iterable_source(send, items=trickle()))
            async with receive:
                async for chunk in receive:
                    got += chunk
                    taken.set()
    assert [(x.line, x.data) for x in got] == [(1, b'{"n":1}'), (2, b'{"n":2}')]


async def test_iterable_source_batches_a_fast_async_iterable() -> None:
    async def fast() -> Any:
        for i in range(2500):
            yield {"n": i}

    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    await iterable_source(send, items=fast(), batch=1000)
    async with receive:
        sizes = [len(chunk) async for chunk in receive]
    assert sizes == [1000, 1000, 500]  # a send per chunk, not per item


async def test_stop_interrupts_an_async_iterable_waiting_for_its_next_item() -> None:
    closed = anyio.Event()

    async def idle() -> Any:
        try:
            yield {"n": 1}
            yield {"n": 2}
            await anyio.sleep_forever()
            yield {"n": 3}  # pragma: no cover
        finally:
            closed.set()

    stop = anyio.Event()
    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    got: list[RawLine] = []
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: iterable_source(send, items=idle(), stop=stop))
            async with receive:
                async for chunk in receive:
                    got += chunk
                    if len(got) == 2:
                        stop.set()  # the iterator now waits forever: stop must cut it
    assert [x.line for x in got] == [1, 2]  # what it produced was sent
    assert closed.is_set()  # and the iterator was closed


def test_validator_rejects_with_line_numbers_and_keeps_raw_bytes() -> None:
    validator = Validator(max_batch_bytes=2000)
    raw = good("ok-1", "x")
    lines = [
        RawLine(1, raw + b"\r", 0),
        RawLine(2, b"   ", len(raw) + 2),
        RawLine(3, b"{nope", len(raw) + 6),
        RawLine(4, good("bad id"), 100),
        RawLine(5, b'{"custom_id":"c5","params":{"model":"claude-3-haiku-20240307"}}', 200),
        RawLine(6, good("big", "x" * 3000), 300),
    ]
    out = validator.check(lines)
    first = out[0]
    assert isinstance(first, Entry)
    assert first.raw == raw  # the exact bytes, \r stripped
    assert first.end == len(raw) + 2  # after "\r\n": where a resume starts
    rejects = [x for x in out if isinstance(x, Reject)]
    assert [(r.line, r.custom_id, r.error.type) for r in rejects] == [
        (3, None, "invalid_json"),
        (4, "bad id", "invalid_custom_id"),
        (5, "c5", "invalid_request_error"),
        (6, "big", "request_too_large"),
    ]
    assert "max_tokens" in rejects[2].error.message


def entries(n: int, size: int = 0) -> list[Entry]:
    return [
        Entry(i + 1, f"c{i:03d}", good(f"c{i:03d}", "x" * size), i * 10, i * 10 + 10)
        for i in range(n)
    ]


def test_an_allowed_new_field_is_let_through_with_its_bytes_and_sampled_apart() -> None:
    def line(cid: str, **extra: Any) -> bytes:
        params = {"model": "m", "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
        return msgspec.json.encode({"custom_id": cid, "params": {**params, **extra}})

    lines = [
        RawLine(1, line("new", effort="high"), 0),
        RawLine(2, line("plain"), 100),
        RawLine(3, line("other", effort="high", temprature=1), 200),  # a typo stays an error
    ]
    strict = Validator(models=None).check(lines)
    assert isinstance(strict[0], Reject)
    assert strict[0].error.message.startswith(
        "params: unknown field `effort` (a misspelt param? If the API"
    )
    assert "--allow-field effort" in strict[0].error.message

    new, plain, other = Validator(models=None, allow_fields=frozenset({"effort"})).check(lines)
    assert isinstance(new, Entry)
    assert isinstance(plain, Entry)
    assert new.raw == lines[0].data  # sent as written, the field included
    assert new.signature != plain.signature  # so the dry run samples it apart
    assert "effort" in new.signature
    assert isinstance(other, Reject)
    assert other.error.message.startswith("params: unknown field `temprature`")


async def _validated(lines: list[RawLine]) -> list[Any]:
    send_in, recv_in = anyio.create_memory_object_stream[list[RawLine]](100)
    send_out, recv_out = anyio.create_memory_object_stream[list[Any]](100)
    async with send_in:
        for start in range(0, len(lines), 100):
            await send_in.send(lines[start : start + 100])
    await validate(recv_in, send_out, config=PipelineConfig(), models=None)
    async with recv_out:
        return [item async for items in recv_out for item in items]


async def test_a_wrong_file_is_said_once_early_and_the_job_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    result = b'{"custom_id": "r%d", "result": {"type": "succeeded"}}'  # a results file
    wrong = [RawLine(n, result % n, -1) for n in range(1, ALL_REJECTED_WARNING + 301)]
    with caplog.at_level("WARNING", logger="pipeline.validate"):
        items = await _validated(wrong)
    assert sum(isinstance(i, Reject) for i in items) == len(wrong)  # none dropped
    [record] = caplog.records
    assert record.getMessage().startswith(
        f"the first {ALL_REJECTED_WARNING} lines read were all rejected "
        "(line 1, custom_id 'r1': unknown field `result`)"
    )
    caplog.clear()
    good = msgspec.json.encode(
        {
            "custom_id": "ok",
            "params": {
                "model": "m",
                "max_tokens": 1,
                "messages": [{"role": "user", "content": "x"}],
            },
        }
    )
    with caplog.at_level("WARNING", logger="pipeline.validate"):
        await _validated([*wrong[:5], RawLine(6, good, -1), *wrong[6:]])
    assert caplog.records == []  # one good line early: bad lines among good ones are normal


def test_packer_respects_the_exact_body_byte_limit() -> None:
    items = entries(40, size=50)
    one = len(items[0].raw)
    limit = 15 + 3 * one + 2  # exactly three entries and their commas
    packer = Packer(max_requests=100, max_bytes=limit)
    chunks, _ = packer.add([*items])
    last = packer.flush()
    assert last is not None
    chunks.append(last)
    assert [len(c.entries) for c in chunks] == [3] * 13 + [1]
    for c in chunks:
        body = build_body(c.entries)
        assert len(body) == c.body_bytes <= limit
        msgspec.json.decode(body)  # valid JSON


def test_packer_counts_requests_and_carries_rejects_with_checkpoint() -> None:
    items: list[Entry | Reject | Flush] = [*entries(5)]
    from pipeline.stages._items import RejectError

    items.insert(2, Reject(99, None, RejectError("invalid_json", "x"), end=25))
    packer = Packer(max_requests=2, max_bytes=10_000)
    chunks, flushed = packer.add([*items, Flush(end=60, final=True)])
    assert flushed
    assert [len(c.entries) for c in chunks] == [2, 2, 1]
    assert [len(c.rejects) for c in chunks] == [1, 0, 0]  # with the chunk pending then
    assert [c.checkpoint for c in chunks] == [25, 40, 60]


def test_a_watermark_caps_checkpoints_until_it_is_lifted() -> None:
    packer = Packer(max_requests=2, max_bytes=10_000)
    first, _ = packer.add([Watermark(end=15, line=1), *entries(4)])
    assert [(c.checkpoint, c.line) for c in first] == [(15, 1), (15, 1)]
    second, _ = packer.add([Watermark(), Flush(end=60)])
    assert second == []  # nothing pending, but the next chunk is not capped
    third, _ = packer.add([*entries(6)[4:], Flush(end=60)])
    assert [(c.checkpoint, c.line) for c in third] == [(60, 6)]


def test_a_stop_watermark_only_lowers_the_cap_and_is_never_lifted() -> None:
    packer = Packer(max_requests=10, max_bytes=10_000)
    # a cap at line 1 is in force; the spend guard stops at line 3: the lower stays
    packer.add([Watermark(end=15, line=1), *entries(2)])
    packer.add([Watermark(end=30, line=2, stop=True), Watermark()])  # a lift is ignored
    chunks, _ = packer.add([*entries(6)[2:], Flush(end=60, final=True)])
    assert [(c.checkpoint, c.line) for c in chunks] == [(15, 1)]
    # without an earlier cap, a stop caps at the refused entry
    packer = Packer(max_requests=10, max_bytes=10_000)
    chunks, _ = packer.add([*entries(4), Watermark(end=20, line=2, stop=True), Flush(end=60)])
    assert [(c.checkpoint, c.line) for c in chunks] == [(20, 2)]


class FakeTimer:
    """Virtual time for the linger: records the delays asked for; the test fires them."""

    def __init__(self) -> None:
        self.scopes: list[tuple[float, anyio.CancelScope]] = []
        self.armed = anyio.Event()

    def __call__(self, delay: float) -> anyio.CancelScope:
        scope = anyio.CancelScope()
        self.scopes.append((delay, scope))
        self.armed.set()
        return scope


async def test_chunker_lingers_then_sends_a_partial_batch() -> None:
    config = PipelineConfig(max_batch_requests=10, linger_seconds=5.0, dry_run="off")
    timer = FakeTimer()
    now = [100.0]
    send_in, recv_in = anyio.create_memory_object_stream[list[Entry | Reject | Flush]](4)
    send_out, recv_out = anyio.create_memory_object_stream[Any](4)
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: chunker(recv_in, send_out, config=config, clock=lambda: now[0], timeout=timer)
        )
        async with send_in:
            await send_in.send([*entries(3)])
            with anyio.fail_after(5):
                await timer.armed.wait()
            assert timer.scopes[-1][0] == 5.0  # it waits the linger time, no longer
            assert recv_out.statistics().current_buffer_used == 0
            now[0] += 5.0
            timer.scopes[-1][1].cancel()  # the linger time is up
            with anyio.fail_after(5):
                chunk = await recv_out.receive()
            assert len(chunk.entries) == 3
        async with recv_out:
            assert [c async for c in recv_out] == []
