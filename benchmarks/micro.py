"""Micro-benchmarks of the hot parts, so a regression shows per stage.

    python -m pytest benchmarks/micro.py --benchmark-only [--benchmark-columns=min,median,ops]

Not collected by the main test suite (``testpaths = ["tests"]``). Each benchmark
works on a fixed workload from the generated request file (``benchmarks/generate.py``)
and says in its name what one call does; ``extra_info["per_item_us"]`` gives the
cost per line or per result. A ``floor_*`` twin measures the bare msgspec/bytes
way of the same work, so the overhead of each stage is visible next to it.

Imports are defensive: a part that does not exist yet is skipped, not an error.
"""

from __future__ import annotations

import asyncio
import importlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import ensure  # noqa: E402

if TYPE_CHECKING:
    from collections.abc import Callable

REQUESTS = 10_000
RESULT_CHUNK = 64 * 1024


def _need(module: str, name: str) -> Any:
    """``module.name``, or skip the benchmark if it does not exist (yet)."""
    try:
        return getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError) as exc:
        pytest.skip(f"{module}.{name} not available: {exc}")


def _per_item(benchmark: Any, fn: Callable[[], object], items: int) -> None:
    benchmark(fn)
    stats = benchmark.stats.stats if benchmark.stats is not None else None
    if stats is not None:
        benchmark.extra_info["items_per_call"] = items
        benchmark.extra_info["per_item_us"] = round(stats.median / items * 1e6, 3)


# ---------------------------------------------------------------------- workloads


@pytest.fixture(scope="module")
def request_bytes() -> bytes:
    """The 10,000-line request file (about 6.5 MB, 3% bad lines)."""
    return ensure(REQUESTS).read_bytes()


@pytest.fixture(scope="module")
def request_lines(request_bytes: bytes) -> list[bytes]:
    return [line for line in request_bytes.split(b"\n") if line]


class _Probe(msgspec.Struct):
    custom_id: str
    params: msgspec.Raw


@pytest.fixture(scope="module")
def result_lines(request_lines: list[bytes]) -> list[bytes]:
    """One succeeded result line per valid request, as the emulator's model answers."""
    types = importlib.import_module("pipeline.api._types")
    check_entry = importlib.import_module("pipeline.api._schema").check_entry
    try:
        respond = importlib.import_module("pipeline.emulator._model").respond
    except ImportError:
        respond = None
    params_decoder = msgspec.json.Decoder(types.MessageCreateParams)
    encoder = msgspec.json.Encoder()
    out = []
    for line in request_lines:
        if isinstance(check_entry(line), importlib.import_module("pipeline.api._schema").Checked):
            probe = msgspec.json.decode(line, type=_Probe)
            params = params_decoder.decode(probe.params)
            if respond is not None:
                message = respond(params, bytes(probe.params))
            else:
                message = types.Message(
                    id="msg_1",
                    model=params.model,
                    content=[{"type": "text", "text": "a stable fake answer", "citations": None}],
                    stop_reason="end_turn",
                    usage=types.Usage(12, 5),
                )
            result = types.ResultLine(probe.custom_id, types.SucceededResult(message))
            out.append(encoder.encode(result))
    return out


@pytest.fixture(scope="module")
def result_chunks(result_lines: list[bytes]) -> list[bytes]:
    """The results body cut into 64 KiB network chunks (lines split across chunks)."""
    body = b"\n".join(result_lines) + b"\n"
    return [body[i : i + RESULT_CHUNK] for i in range(0, len(body), RESULT_CHUNK)]


# ---------------------------------------------------------------------- line splitting


def test_floor_split_request_file(benchmark: Any, request_bytes: bytes) -> None:
    """bytes.split of the whole request file: the floor of line splitting."""
    lines = request_bytes.count(b"\n")
    _per_item(benchmark, lambda: request_bytes.split(b"\n"), lines)


def test_source_line_reader(benchmark: Any, request_bytes: bytes) -> None:
    """pipeline.stages.source.LineReader over the request file in 1 MiB chunks."""
    line_reader = _need("pipeline.stages.source", "LineReader")
    chunks = [request_bytes[i : i + (1 << 20)] for i in range(0, len(request_bytes), 1 << 20)]

    def run() -> int:
        reader = line_reader()
        n = sum(len(reader.feed(chunk)) for chunk in chunks)
        return n + len(reader.flush())

    _per_item(benchmark, run, request_bytes.count(b"\n"))


def test_line_splitter_results(benchmark: Any, result_chunks: list[bytes]) -> None:
    """pipeline.api._lines.BlockSplitter (what the results stage reads through) over a
    results body in 64 KiB chunks: blocks of whole lines, no bytes object per line."""
    splitter_type = _need("pipeline.api._lines", "BlockSplitter")
    lines = sum(chunk.count(b"\n") for chunk in result_chunks)

    def run() -> int:
        splitter = splitter_type()
        n = sum(len(splitter.feed(chunk)) for chunk in result_chunks)
        return n + len(splitter.flush())

    _per_item(benchmark, run, lines)


# ---------------------------------------------------------------------- validation


class _FloorParams(msgspec.Struct):
    model: str
    max_tokens: int
    messages: list[msgspec.Raw]


class _FloorRequest(msgspec.Struct):
    custom_id: str
    params: _FloorParams


def test_floor_decode_small_struct(benchmark: Any, request_lines: list[bytes]) -> None:
    """Decode each request line into a 3-field Struct (the floor's validation)."""
    decoder = msgspec.json.Decoder(_FloorRequest)

    def run() -> int:
        ok = 0
        for line in request_lines:
            try:
                decoder.decode(line)
                ok += 1
            except msgspec.DecodeError:
                pass
        return ok

    _per_item(benchmark, run, len(request_lines))


def test_check_entry(benchmark: Any, request_lines: list[bytes]) -> None:
    """pipeline.api._schema.check_entry on every request line (full schema)."""
    check_entry = _need("pipeline.api._schema", "check_entry")
    _per_item(benchmark, lambda: [check_entry(line) for line in request_lines], len(request_lines))


def test_validator_check(benchmark: Any, request_bytes: bytes) -> None:
    """pipeline.stages.validate.Validator.check: lines -> Entry / Reject."""
    validator_type = _need("pipeline.stages.validate", "Validator")
    line_reader = _need("pipeline.stages.source", "LineReader")
    raw_lines = line_reader().feed(request_bytes)
    validator = validator_type()
    _per_item(benchmark, lambda: validator.check(raw_lines), len(raw_lines))


# ---------------------------------------------------------------------- chunk packing


@pytest.fixture(scope="module")
def entries(request_bytes: bytes) -> list[Any]:
    validator_type = _need("pipeline.stages.validate", "Validator")
    entry_type = _need("pipeline.stages._items", "Entry")
    line_reader = _need("pipeline.stages.source", "LineReader")
    items = validator_type().check(line_reader().feed(request_bytes))
    return [item for item in items if isinstance(item, entry_type)]


def test_floor_splice_body(benchmark: Any, request_lines: list[bytes]) -> None:
    """Join 10,000 raw lines into one create body: the floor of chunk packing."""
    _per_item(
        benchmark,
        lambda: b'{"requests":[' + b",".join(request_lines) + b"]}",
        len(request_lines),
    )


def test_packer_and_body(benchmark: Any, entries: list[Any]) -> None:
    """pipeline.stages.chunker.Packer.add + build_body: entries -> create bodies."""
    packer_type = _need("pipeline.stages.chunker", "Packer")
    build_body = _need("pipeline.stages._protocol", "build_body")

    def run() -> int:
        packer = packer_type(max_requests=10_000, max_bytes=32_000_000)
        chunks, _ = packer.add(entries)
        last = packer.flush()
        if last is not None:
            chunks.append(last)
        return sum(len(build_body(chunk.entries)) for chunk in chunks)

    _per_item(benchmark, run, len(entries))


# ---------------------------------------------------------------------- result parsing


class _FloorResult(msgspec.Struct):
    type: str


class _FloorResultLine(msgspec.Struct):
    custom_id: str
    result: _FloorResult


def test_floor_result_route(benchmark: Any, result_lines: list[bytes]) -> None:
    """Decode custom_id and result type of each result line (route only)."""
    decoder = msgspec.json.Decoder(_FloorResultLine)
    _per_item(
        benchmark,
        lambda: [decoder.decode(line).result.type for line in result_lines],
        len(result_lines),
    )


def test_result_line_full_decode(benchmark: Any, result_lines: list[bytes]) -> None:
    """pipeline.api._types.ResultLine: full typed decode of each result line."""
    result_line = _need("pipeline.api._types", "ResultLine")
    decoder = msgspec.json.Decoder(result_line)
    _per_item(benchmark, lambda: [decoder.decode(line) for line in result_lines], len(result_lines))


def test_results_route(benchmark: Any, result_lines: list[bytes]) -> None:
    """pipeline.stages.results: what ``ResultsCollector._route`` does per block of
    lines (``Client.results_blocks``): decode the block into routing views in one call,
    then mark, sort and tally them in one pass (usage priced once per block)."""
    decode_block = _need("pipeline.stages.results", "_decode_block")
    tally_type = _need("pipeline.stages.results", "_Tally")
    progress_type = _need("pipeline.stages._protocol", "Progress")
    blocks = [b"\n".join(result_lines[i : i + 500]) for i in range(0, len(result_lines), 500)]

    def run() -> int:
        handled: set[str] = set()
        progress = progress_type()
        final = 0
        for block in blocks:
            views, _ = decode_block(block, "msgbatch_bench")
            tally = tally_type()
            skipped, others = tally.sort(views, handled)
            final += len(views) - len(skipped) - len(others)
            tally.add_to(progress)
        return final

    _per_item(benchmark, run, len(result_lines))


# ---------------------------------------------------------------------- sink writing


def test_floor_file_write(benchmark: Any, result_lines: list[bytes], tmp_path: Path) -> None:
    """Write the result lines to a file in one join + write: the sink floor."""
    path = tmp_path / "floor.jsonl"

    def run() -> None:
        with path.open("wb") as f:
            f.write(b"\n".join(result_lines) + b"\n")

    _per_item(benchmark, run, len(result_lines))


def test_jsonl_sink_write(benchmark: Any, result_lines: list[bytes], tmp_path: Path) -> None:
    """pipeline.stages.sink.JsonlSink: open, write blocks of 500 lines as the results
    stage does (``write_block``), commit."""
    sink_type = _need("pipeline.stages.sink", "JsonlSink")
    position_type = _need("pipeline.ledger._base", "SinkPosition")
    groups = [result_lines[i : i + 500] for i in range(0, len(result_lines), 500)]
    blocks = [(b"\n".join(group), len(group)) for group in groups]
    path = tmp_path / "sink.jsonl"
    loop = asyncio.new_event_loop()

    async def write_all() -> None:
        path.unlink(missing_ok=True)
        sink = sink_type(path)
        await sink.open(position_type(0, 0))
        for block, count in blocks:
            await sink.write_block(block, count)
        await sink.commit()
        await sink.aclose()

    try:
        _per_item(benchmark, lambda: loop.run_until_complete(write_all()), len(result_lines))
    finally:
        loop.close()
