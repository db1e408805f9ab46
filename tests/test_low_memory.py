"""``PipelineConfig.low_memory`` end to end against the emulator: one chunk at a time
(the chunker hands nothing over while the submitter holds a chunk), bodies read back
from the input, every result once, and a stop and a cancel that finish."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec
import pytest
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from pipeline import Client, Pipeline, PipelineConfig, StageError
from pipeline.cli import build_parser
from pipeline.cli.run import build_config
from pipeline.ledger import read_status
from pipeline.stages import CHUNKER, POLLER, RESULTS, SUBMITTER, VALIDATE, chunker, submitter
from pipeline.stages.sink import JsonlSink
from pipeline.stages.submitter import InputChangedError
from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator
from tests._helpers import FAST, entry, read_results, wait_for, write_input

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

T = TypeVar("T")
LOW = msgspec.structs.replace(FAST, low_memory=True)


def job(tmp_path: Path, client: Client, output: Any = None, **options: Any) -> Pipeline:
    """A job of ``tmp_path``'s ``in.jsonl`` into its ``out.jsonl`` (or ``output``), the
    state in its ``state.db``; low memory (``LOW``) unless ``config`` is given."""
    options.setdefault("config", LOW)
    out = tmp_path / "out.jsonl" if output is None else output
    return Pipeline(
        tmp_path / "in.jsonl", out, client=client, state=tmp_path / "state.db", **options
    )


class Logged(ObjectReceiveStream[T]):
    """The submitter's end of the chunk stream, noting when it asks for a chunk (it let
    go of the last) and when it takes one."""

    def __init__(self, inner: ObjectReceiveStream[T], log: list[str]) -> None:
        self.inner, self.log = inner, log

    async def receive(self) -> T:
        self.log.append("ask")
        item = await self.inner.receive()
        self.log.append("take")
        return item

    async def aclose(self) -> None:
        await self.inner.aclose()


class LoggedSend(ObjectSendStream[T]):
    """The chunker's end of the chunk stream, noting each chunk it hands over (and
    calling ``before`` first, when given)."""

    def __init__(
        self, inner: ObjectSendStream[T], log: list[str], before: Callable[[], object] = list
    ) -> None:
        self.inner, self.log, self.before = inner, log, before

    async def send(self, item: T) -> None:
        self.before()
        self.log.append("hand")
        await self.inner.send(item)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_low_memory_hands_a_chunk_over_only_once_the_last_is_let_go(
    tmp_path: Path,
) -> None:
    log: list[str] = []

    async def logged_chunker(receive: Any, send: Any, /, **options: Any) -> None:
        await chunker(receive, LoggedSend(send, log), **options)

    async def logged_submitter(receive: Any, send: Any, /, **options: Any) -> None:
        await submitter(Logged(receive, log), send, **options)

    ids = write_input(tmp_path / "in.jsonl", 95)
    stages = [
        VALIDATE,
        CHUNKER.replaced_by(logged_chunker),
        SUBMITTER.replaced_by(logged_submitter),
        POLLER,
        RESULTS,
    ]
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            config = msgspec.structs.replace(LOW, max_in_flight=1_000)
            pipeline = job(tmp_path, client, config=config, stages=stages)
            with anyio.fail_after(30):
                stats = await pipeline.run()
        submissions = emu.submissions()
    assert stats.finished
    assert sorted(r.custom_id for r in read_results(tmp_path / "out.jsonl")) == sorted(ids)
    assert Counter(submissions.values()) == {1: 95}
    # 10 chunks; after the submitter takes one, the next is handed over (packed) only
    # once it asked for another (let go of the one it held)
    assert log.count("take") == log.count("hand") == 10
    holding = False
    for event in log:
        if event == "take":
            holding = True
        elif event == "ask":
            holding = False
        else:
            assert not holding, log


async def test_low_memory_sends_every_request_once_with_bodies_read_back(tmp_path: Path) -> None:
    lines = [msgspec.json.encode(entry(f"req-{i}", f"question {i}")) for i in range(60)]
    lines[7] += b"\r"  # a CRLF line: sent from memory
    lines.insert(20, b"")  # a blank line: the lines around it are read apart
    lines.insert(30, b'{"custom_id": "bad"')  # a reject between two lines
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines))  # no newline at the end
    # a few fail with api_error: sent again, read back from the spool and the file
    emu_config = EmulatorConfig(batch_seconds=0.0, request_error_rate=0.2, seed=3)
    async with serve_emulator(emu_config, data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            config = msgspec.structs.replace(LOW, max_attempts=5)
            pipeline = job(tmp_path, client, rejects=tmp_path / "rej.jsonl", config=config)
            with anyio.fail_after(30):
                stats = await pipeline.run()
        submissions = emu.submissions()
    assert stats.finished
    assert (stats.written, stats.rejected) == (60, 1)
    written = Counter(r.custom_id for r in read_results(tmp_path / "out.jsonl"))
    assert written == {f"req-{i}": 1 for i in range(60)}
    assert max(submissions.values()) > 1  # some were sent again
    assert sum(submissions.values()) == 60 + stats.retried


@pytest.mark.parametrize(
    ("edit", "named"),
    [
        pytest.param(
            lambda data: data.replace(b"question 3", b"question 8", 1),
            "line 4 (custom_id 'req-3')",
            id="same-size",
        ),
        pytest.param(lambda data: b" " + data, "line 1 (custom_id 'req-0')", id="shifted"),
    ],
)
async def test_an_input_changed_under_the_job_sends_nothing_of_it_and_a_rerun_completes(
    tmp_path: Path, edit: Callable[[bytes], bytes], named: str
) -> None:
    # the input is edited after the first chunk was packed (its bytes let go) and
    # before its body is read back: an edit of the same size (the lines stay where
    # they were) as much as one that moves every line
    path = tmp_path / "in.jsonl"
    lines = [msgspec.json.encode(entry(f"req-{i}", f"question {i}")) for i in range(30)]
    original = b"\n".join(lines) + b"\n"
    path.write_bytes(original)

    def change_input() -> None:
        if path.read_bytes() == original:
            path.write_bytes(edit(original))

    async def editing_chunker(receive: Any, send: Any, /, **options: Any) -> None:
        await chunker(receive, LoggedSend(send, [], before=change_input), **options)

    stages = [VALIDATE, CHUNKER.replaced_by(editing_chunker), SUBMITTER, POLLER, RESULTS]
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            first = job(tmp_path, client, stages=stages)
            with anyio.fail_after(30), pytest.raises(StageError) as failed:
                await first.run()
            assert emu.submissions() == {}  # no batch of a changed line, none of the others
            held = await read_status(tmp_path / "state.db")
            assert held is not None
            # the cut body made certainly no batch: its requests wait in the spool, and
            # no create of unknown outcome is left for the next start to settle
            assert held.spooled >= 10
            assert [b.state for b in held.batches if b.state == "sending"] == []
            path.write_bytes(original)  # restored: the job goes on
            again = job(tmp_path, client)
            with anyio.fail_after(30):
                stats = await again.run()
        submissions = emu.submissions()
    reason = failed.value.__cause__
    assert isinstance(reason, InputChangedError)
    assert f"changed while the job ran: {named} no longer holds" in str(reason)
    assert stats.finished
    assert (stats.written, stats.rejected) == (30, 0)
    written = Counter(r.custom_id for r in read_results(tmp_path / "out.jsonl"))
    assert written == {f"req-{i}": 1 for i in range(30)}
    assert Counter(submissions.values()) == {1: 30}  # each request paid once


async def test_a_stop_with_low_memory_finishes_and_a_rerun_completes(tmp_path: Path) -> None:
    ids = write_input(tmp_path / "in.jsonl", 50)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline: Pipeline

            class StopAtFirst(JsonlSink):
                async def write(self, lines: list[bytes]) -> None:
                    pipeline.stop("test")
                    await super().write(lines)

            # one batch in flight: the submitter waits for room holding a chunk
            config = msgspec.structs.replace(LOW, max_in_flight=10)
            pipeline = job(tmp_path, client, StopAtFirst(tmp_path / "out.jsonl"), config=config)
            with anyio.fail_after(30):
                first = await pipeline.run()
            assert first.stopped_reason == "test"
            assert not first.finished
            again = job(tmp_path, client, JsonlSink(tmp_path / "out.jsonl"), config=config)
            with anyio.fail_after(30):
                second = await again.run()
        submissions = emu.submissions()
    assert second.finished
    assert sorted(r.custom_id for r in read_results(tmp_path / "out.jsonl")) == sorted(ids)
    assert Counter(submissions.values()) == {1: 50}


async def test_a_cancel_with_low_memory_finishes(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 50)
    clock = ManualClock()
    emu_config = EmulatorConfig(batch_seconds=60, clock=clock)
    async with serve_emulator(emu_config, data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            # two batches in flight, the third chunk held waiting for room
            pipeline = job(tmp_path, client, config=msgspec.structs.replace(LOW, max_in_flight=20))
            async with pipeline:

                async def both_sent() -> bool:
                    return pipeline.statistics().submitted == 20

                await wait_for(both_sent, what="two batches created")
                with anyio.fail_after(30):
                    stats = await pipeline.cancel()
        submissions = emu.submissions()
    assert stats.canceled
    assert stats.outcomes == {"canceled": 20}
    assert Counter(submissions.values()) == {1: 20}


def test_low_memory_is_on_by_itself_for_large_batches_and_by_flag() -> None:
    assert not PipelineConfig().one_chunk_at_a_time  # 32 MB bodies: two chunks overlap
    large = PipelineConfig(max_batch_requests=100_000, max_batch_bytes=256_000_000)
    assert large.one_chunk_at_a_time
    assert not msgspec.structs.replace(large, low_memory=False).one_chunk_at_a_time
    assert not msgspec.structs.replace(large, chunk_buffer=1).one_chunk_at_a_time
    assert PipelineConfig(low_memory=True).one_chunk_at_a_time
    with pytest.raises(ValueError, match="chunk_buffer must be 0"):
        PipelineConfig(low_memory=True, chunk_buffer=1)
    for command in (["run", "in.jsonl", "-o", "out.jsonl"], ["worker", "def.py"]):
        parser = build_parser(command[:1])
        assert parser.parse_args(command).low_memory is None  # the automatic choice
        assert parser.parse_args([*command, "--low-memory"]).low_memory is True
        assert parser.parse_args([*command, "--no-low-memory"]).low_memory is False
    args = build_parser(["run"]).parse_args(["run", "i", "-o", "o", "--no-low-memory"])
    assert build_config(args).low_memory is False
