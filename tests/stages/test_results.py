"""The results stage: routing against a scripted client and ledger (what is written,
in which order, what is spooled, what is tallied), and against the emulator on
loopback: a download cut in the middle is re-opened and only the missing lines are
written."""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec
import pytest

from pipeline._config import PipelineConfig
from pipeline._errors import ResultStreamError
from pipeline._pipeline import Pipeline
from pipeline.api._client import Client
from pipeline.api._lines import BlockSplitter
from pipeline.ledger._base import SinkPosition
from pipeline.stages import Capacity, JobCounters
from pipeline.stages._items import EndedBatch
from pipeline.stages.results import ResultsCollector
from pipeline.stages.sink import CallbackSink, JsonlSink, ResultSink
from pipeline.testing import EmulatorConfig, serve_emulator
from tests._helpers import quick

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Sequence
    from pathlib import Path

# the module (``pipeline.stages.results`` is also the name of the stage function)
results_module = importlib.import_module("pipeline.stages.results")

MODEL = "claude-3-haiku-20240307"


def line(cid: str) -> bytes:
    params = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": cid}]}
    return msgspec.json.encode({"custom_id": cid, "params": params})


async def test_a_cut_download_is_reopened_and_each_line_written_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [f"r-{i:04d}" for i in range(600)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(line(cid) for cid in ids) + b"\n")
    config = PipelineConfig(
        max_batch_requests=150,
        max_in_flight=600,
        linger_seconds=0.01,
        poll_interval=0.01,
        max_poll_interval=0.05,
        dry_run="off",
    )
    emu_config = EmulatorConfig(batch_seconds=0.0, cut_rate=0.5, seed=4)
    caplog.set_level(logging.WARNING, logger="pipeline.results")
    async with serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=config, client=client
            )
            with anyio.fail_after(20):
                stats = await pipeline.run()
        submissions = emu.submissions()
    reopened = [r for r in caplog.records if "re-opening" in r.getMessage()]
    assert reopened  # downloads were cut (the seed makes it so) ...
    written = [
        msgspec.json.decode(x)["custom_id"]
        for x in (tmp_path / "out.jsonl").read_bytes().splitlines()
    ]
    assert len(written) == len(set(written))  # ... and nothing was written twice
    assert sorted(written) == ids  # ... nor lost
    assert submissions == dict.fromkeys(ids, 1)  # re-downloading never re-submits
    assert stats.written == 600
    assert stats.finished


class _ResultsRefused(httpx.AsyncBaseTransport):
    """The emulator behind a gateway that answers 503 to the first ``refusals`` GETs of
    a batch's results (a burst longer than the client's own tries)."""

    def __init__(self, refusals: int) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self.refusals = refusals
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/results") and self.refused < self.refusals:
            self.refused += 1
            error = {"type": "error", "error": {"type": "api_error", "message": "unavailable"}}
            return httpx.Response(503, json=error, request=request)
        return await self._inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_a_download_refused_longer_than_the_client_tries_is_started_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [f"r-{i:04d}" for i in range(300)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(line(cid) for cid in ids) + b"\n")
    config = PipelineConfig(
        max_batch_requests=100, linger_seconds=0.01, poll_interval=0.01, dry_run="off"
    )
    # the client tries twice (max_retries=1): 5 refusals make it give up twice, then
    # the third start of that download goes through
    gateway = _ResultsRefused(refusals=5)
    caplog.set_level(logging.WARNING, logger="pipeline.results")
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        client = Client(
            api_key="k", base_url=emu.url, transport=gateway, max_retries=1, sleep=quick
        )
        async with client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=config, client=client
            )
            with anyio.fail_after(20):
                stats = await pipeline.run()
        submissions = emu.submissions()
    assert gateway.refused == 5
    again = [r.getMessage() for r in caplog.records if "did not start" in r.getMessage()]
    assert len(again) == 2, again
    assert "503" in again[0]
    written = [
        msgspec.json.decode(x)["custom_id"]
        for x in (tmp_path / "out.jsonl").read_bytes().splitlines()
    ]
    assert sorted(written) == ids  # each once, none lost
    assert submissions == dict.fromkeys(ids, 1)  # nothing sent again
    assert stats.finished


# -- routing, with a scripted client and ledger --------------------------------------


def succeeded(cid: str, model: str = MODEL, tokens: tuple[int, int] = (3, 4)) -> bytes:
    usage = {"input_tokens": tokens[0], "output_tokens": tokens[1]}
    message = {"id": "msg_" + cid, "model": model, "content": [], "usage": usage}
    return msgspec.json.encode(
        {"custom_id": cid, "result": {"type": "succeeded", "message": message}}
    )


def errored(cid: str, error_type: str) -> bytes:
    error = {"type": "error", "error": {"type": error_type, "message": "no"}}
    return msgspec.json.encode({"custom_id": cid, "result": {"type": "errored", "error": error}})


def ended_line(cid: str, kind: str) -> bytes:
    return msgspec.json.encode({"custom_id": cid, "result": {"type": kind}})


class ScriptedClient:
    """Serves one results body, cut into chunks of ``chunk`` bytes, for every open."""

    def __init__(self, body: bytes, chunk: int, block_bytes: int) -> None:
        self.body, self.chunk, self.block_bytes = body, chunk, block_bytes
        self.opens = 0

    async def retrieve_batch(self, batch_id: str) -> None:
        await anyio.lowlevel.checkpoint()

    async def results_blocks(self, batch: object) -> AsyncIterator[bytes]:
        self.opens += 1
        splitter = BlockSplitter(self.block_bytes)
        for i in range(0, len(self.body), self.chunk):
            block = splitter.feed(self.body[i : i + self.chunk])
            if block:
                yield block
        last = splitter.flush()
        if last:
            yield last


class ScriptedLedger:
    """Attempts and owed lines as given; records what the stage commits."""

    def __init__(self, attempts: dict[str, int], owed: set[str] | None = None) -> None:
        self._attempts, self._owed = attempts, owed
        self.commits: list[dict[str, Any]] = []

    async def attempts(self, custom_ids: Sequence[str]) -> dict[str, int]:
        await anyio.lowlevel.checkpoint()
        return {cid: self._attempts[cid] for cid in custom_ids if cid in self._attempts}

    async def unwritten(self, local_id: int, custom_ids: Sequence[str]) -> list[str]:
        await anyio.lowlevel.checkpoint()
        return [cid for cid in custom_ids if self._owed is None or cid in self._owed]

    async def record_output_start(self, local_id: int, offset: int) -> None:
        await anyio.lowlevel.checkpoint()

    async def commit_results(self, local_id: int, **kwargs: Any) -> int:
        await anyio.lowlevel.checkpoint()
        self.commits.append({**kwargs, "spool": list(kwargs["spool"])})
        return 0


async def collect(
    body: bytes,
    sink: ResultSink,
    *,
    chunk: int = 1 << 16,
    block_bytes: int = 1 << 18,
    ledger: ScriptedLedger | None = None,
    resumed: dict[int, int] | None = None,
    config: PipelineConfig | None = None,
) -> tuple[JobCounters, ScriptedLedger]:
    ledger = ledger or ScriptedLedger({})
    progress = JobCounters()
    collector = ResultsCollector(
        client=ScriptedClient(body, chunk, block_bytes),  # type: ignore[arg-type]
        ledger=ledger,  # type: ignore[arg-type]
        sink=sink,
        config=config or PipelineConfig(),
        capacity=Capacity(100),
        progress=progress,
        resumed=resumed,
    )
    await sink.open(SinkPosition())
    try:
        await collector.collect(EndedBatch(1, "msgbatch_t", body.count(b"\n") + 1, None))
    finally:
        await sink.aclose()
    return progress, ledger


MIXED = [
    succeeded("s1"),
    errored("e1", "api_error"),  # retried: attempts left
    succeeded("s2", "claude-3-5-haiku-20241022", (10, 20)),
    errored("e2", "overloaded_error"),  # no attempt left: written after the others
    errored("bad", "invalid_request_error"),  # final
    errored("s1", "api_error"),  # a duplicate custom_id: skipped
    ended_line("x", "expired"),  # retried
    ended_line("c", "canceled"),  # final (the default policy)
    succeeded("s3"),
]


async def test_routing_writes_finals_in_order_then_spent_retries(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    ledger = ScriptedLedger({"e1": 1, "e2": 3, "x": 2})
    progress, _ = await collect(b"\n".join(MIXED) + b"\n", JsonlSink(path), ledger=ledger)
    order = [0, 2, 4, 7, 8, 3]
    assert path.read_bytes() == b"".join(MIXED[i] + b"\n" for i in order)
    (commit,) = ledger.commits
    assert commit["written_ids"] == ["s1", "s2", "bad", "c", "s3", "e2"]
    assert commit["spool"] == ["e1", "x"]
    assert commit["output"] == SinkPosition(path.stat().st_size, 6)
    assert progress.outcomes == {
        "succeeded": 3,
        "errored:invalid_request_error": 1,
        "canceled": 1,
        "errored:overloaded_error": 1,
    }
    assert {model: totals[:2] for model, totals in progress.usage.items()} == {
        MODEL: [6, 8],
        "claude-3-5-haiku-20241022": [10, 20],
    }
    assert progress.written == 6
    assert progress.spooled == 2


@pytest.mark.parametrize(("chunk", "block_bytes"), [(1, 0), (7, 0), (64, 100), (1 << 16, 0)])
async def test_routing_is_the_same_in_any_blocks(
    tmp_path: Path, chunk: int, block_bytes: int
) -> None:
    path = tmp_path / "out.jsonl"
    ledger = ScriptedLedger({"e1": 1, "e2": 3, "x": 2})
    body = b"\n".join(MIXED)  # no trailing newline
    progress, _ = await collect(
        body, JsonlSink(path), chunk=chunk, block_bytes=block_bytes, ledger=ledger
    )
    assert sorted(path.read_bytes().splitlines()) == sorted(MIXED[i] for i in (0, 2, 3, 4, 7, 8))
    assert sum(progress.outcomes.values()) == 6
    assert sorted(cid for c in ledger.commits for cid in c["spool"]) == ["e1", "x"]


async def test_crlf_endings_and_blank_lines_are_written_as_lines(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    lines = [succeeded(f"r{i}") for i in range(5)]
    body = b"\r\n".join(lines[:3]) + b"\r\n\r\n\n" + b"\n".join(lines[3:]) + b"\n\n"
    progress, _ = await collect(body, JsonlSink(path))
    assert path.read_bytes() == b"".join(line + b"\n" for line in lines)
    assert progress.written == 5


async def test_a_blank_line_deep_in_a_large_block(tmp_path: Path) -> None:
    # the block is decoded in pieces of 64 KiB: one that is not clean sends the whole
    # block the line-by-line way
    path = tmp_path / "out.jsonl"
    lines = [succeeded(f"r{i:05d}") for i in range(2000)]
    body = b"\n".join(lines[:1990]) + b"\n\n" + b"\n".join(lines[1990:] + lines[:3])
    assert len(body) > 3 * (1 << 16)
    progress, _ = await collect(body, JsonlSink(path), chunk=len(body), block_bytes=0)
    assert path.read_bytes() == b"".join(line + b"\n" for line in lines)
    assert progress.outcomes == {"succeeded": 2000}


async def test_a_callback_sink_gets_each_line(tmp_path: Path) -> None:
    got: list[bytes] = []

    async def keep(line: bytes) -> None:
        got.append(line)

    await collect(b"\n".join(MIXED[:3]), CallbackSink(keep, raw=True))
    assert got == [MIXED[0], MIXED[2]]


async def test_a_jsonl_sink_subclass_gets_each_line_through_its_write(tmp_path: Path) -> None:
    # blocks go to a plain JsonlSink as they came; a subclass may override ``write``
    seen: list[bytes] = []

    class Spy(JsonlSink):
        async def write(self, lines: list[bytes]) -> None:
            seen.extend(lines)
            await super().write(lines)

    lines = [succeeded(f"r{i}") for i in range(4)]
    await collect(b"\n".join(lines), Spy(tmp_path / "out.jsonl"))
    assert seen == lines
    assert (tmp_path / "out.jsonl").read_bytes() == b"".join(line + b"\n" for line in lines)


async def test_a_resumed_batch_writes_only_the_lines_it_owes(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    lines = [succeeded(f"r{i}") for i in range(6)]
    ledger = ScriptedLedger({}, owed={"r1", "r4"})
    await collect(b"\n".join(lines), JsonlSink(path), ledger=ledger, resumed={1: 2})
    assert path.read_bytes() == lines[1] + b"\n" + lines[4] + b"\n"


async def test_commits_come_once_commit_lines_are_pending(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(results_module, "COMMIT_LINES", 4)
    lines = [succeeded(f"r{i}") for i in range(10)]
    _, ledger = await collect(b"\n".join(lines), JsonlSink(tmp_path / "o"), chunk=1, block_bytes=0)
    assert [c["written"] for c in ledger.commits] == [4, 4, 2]
    assert [c["done"] for c in ledger.commits] == [False, False, True]


@pytest.mark.parametrize(
    "bad",
    [
        b"{not json",
        b"   ",
        b'{"custom_id":1,"result":{"type":"expired"}}',
        ended_line("a", "expired") + ended_line("b", "expired"),  # two values on a line
        ended_line("a", "expired") + b"," + ended_line("b", "expired"),
        b'{"custom_id":"a",\n"result":{"type":"expired"}}',  # one value on two lines
    ],
)
async def test_a_malformed_line_fails_the_download_as_on_its_own(
    tmp_path: Path, bad: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.ERROR, logger="pipeline.results")
    body = b"\n".join([succeeded("ok"), bad, succeeded("ok2")]) + b"\n"
    first_bad = bad.split(b"\n")[0]
    try:
        msgspec.json.decode(first_bad, type=results_module._View)
    except msgspec.DecodeError as exc:
        expected = f"malformed result line: {exc}"
    with pytest.raises(ResultStreamError) as info:
        await collect(body, JsonlSink(tmp_path / "out.jsonl"))
    assert expected in str(info.value)
