"""Sinks: the JSONL file is truncated back to its last commit on resume, takes lines
as blocks too, and the rejects writer copies every recorded reject exactly once
across a restart."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline._errors import LedgerError
from pipeline.ledger._base import JobSpec, SinkPosition
from pipeline.ledger._sqlite import SQLiteLedger
from pipeline.stages import JobCounters
from pipeline.stages._items import Reject, RejectError
from pipeline.stages.sink import JsonlSink, rejects_writer

if TYPE_CHECKING:
    from pathlib import Path

JOB = JobSpec(input_path=None, input_fingerprint=None, output_path=None, rejects_path=None)


async def test_jsonl_sink_truncates_to_the_committed_offset_on_resume(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path)
    await sink.open(SinkPosition())
    await sink.write([b'{"a":1}', b'{"b":2}'])
    committed = await sink.commit()
    await sink.write([b'{"c":3}'])  # written, never committed: the process dies here
    await sink.aclose()
    assert path.read_bytes().count(b"\n") == 3
    assert committed == SinkPosition(16, 2)

    again = JsonlSink(path)
    await again.open(committed)
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n'  # the uncommitted tail is gone
    await again.write([b'{"d":4}'])
    assert await again.commit() == SinkPosition(24, 3)
    await again.aclose()
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n{"d":4}\n'


async def test_jsonl_sink_refuses_a_file_shorter_than_its_commit(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    path.write_bytes(b"short\n")
    sink = JsonlSink(path)
    with pytest.raises(LedgerError, match="shorter than") as info:
        await sink.open(SinkPosition(100, 5))
    assert path.read_bytes() == b"short\n"  # nothing overwritten
    # it names the file that is short (not as a "state file"), and what to do
    assert str(info.value).startswith(f"file {path}: is 6 bytes, shorter than the 100 bytes")
    assert str(info.value).endswith("remove the state file and run the job again with --overwrite")


async def test_jsonl_sink_takes_blocks_and_lines_alike(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    sink = JsonlSink(path)
    await sink.open(SinkPosition())
    await sink.write([b'{"a":1}'])
    await sink.write_block(b'{"b":2}\n{"c":3}', 2)
    await sink.write_block(b"", 0)
    await sink.write([b'{"d":4}', b'{"e":5}'])
    assert await sink.commit() == SinkPosition(40, 5)
    await sink.aclose()
    assert path.read_bytes() == b'{"a":1}\n{"b":2}\n{"c":3}\n{"d":4}\n{"e":5}\n'


def rejects(first: int, n: int) -> list[Reject]:
    return [
        Reject(i, f"bad-{i}", RejectError("invalid_json", f"line {i} is broken"))
        for i in range(first, first + n)
    ]


class CrashAfterWrite(Exception):
    pass


class DiesBeforeCommit:
    """A ledger whose ``commit_rejects`` never happens: the process died after the
    rejects file was written and fsynced, before the ledger recorded it."""

    def __init__(self, ledger: SQLiteLedger) -> None:
        self._ledger = ledger

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    async def commit_rejects(self, position: SinkPosition) -> None:
        raise CrashAfterWrite


async def copy_rejects(ledger: Any, sink: JsonlSink, position: SinkPosition) -> None:
    done = anyio.Event()
    done.set()
    with anyio.fail_after(10):
        await rejects_writer(
            ledger=ledger, sink=sink, progress=JobCounters(), position=position, done=done
        )


async def test_rejects_writer_writes_each_reject_once_across_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "rejects.jsonl"
    state = tmp_path / "job.state"
    ledger = SQLiteLedger(state)
    resume = await ledger.open(JOB)
    await ledger.record_rejects(rejects(1, 3), checkpoint=-1, line=3)
    sink = JsonlSink(path)
    await sink.open(resume.rejects)
    await copy_rejects(ledger, sink, resume.rejects)
    await ledger.record_rejects(rejects(4, 2), checkpoint=-1, line=5)
    with pytest.raises(CrashAfterWrite):
        await copy_rejects(DiesBeforeCommit(ledger), sink, SinkPosition(sink.position.offset, 3))
    await sink.aclose()
    await ledger.aclose()
    assert path.read_bytes().count(b"\n") == 5  # all on disk, the last two uncommitted

    ledger = SQLiteLedger(state)  # the restart
    resume = await ledger.open(JOB)
    assert resume.rejects.count == 3
    await ledger.record_rejects(rejects(6, 1), checkpoint=-1, line=6)
    sink = JsonlSink(path)
    await sink.open(resume.rejects)
    await copy_rejects(ledger, sink, resume.rejects)
    await sink.aclose()
    status = await ledger.status()
    await ledger.aclose()
    lines = [msgspec.json.decode(x) for x in path.read_bytes().splitlines()]
    assert [x["line"] for x in lines] == [1, 2, 3, 4, 5, 6]  # each exactly once, in order
    assert lines[0] == {
        "line": 1,
        "custom_id": "bad-1",
        "error": {"type": "invalid_json", "message": "line 1 is broken"},
    }
    assert status.rejects_written == 6
