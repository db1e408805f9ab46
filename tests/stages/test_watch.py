"""The watched-directory source: each new file once, lines numbered on, until stopped."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import anyio
import pytest

from pipeline.stages._items import RawLine
from pipeline.stages.watch import TakenFiles, pending_files, watch_source

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import ObjectReceiveStream


class Poller:
    """An injected sleep: each look at the directory ends in ``idle``, and the
    next one starts when the test calls ``again()``."""

    def __init__(self) -> None:
        self.idle = anyio.Event()
        self._wake = anyio.Event()
        self.intervals: list[float] = []

    async def sleep(self, seconds: float) -> None:
        self.intervals.append(seconds)
        self.idle.set()
        await self._wake.wait()
        self._wake = anyio.Event()

    async def again(self) -> None:
        self.idle = anyio.Event()
        self._wake.set()
        await self.idle.wait()


def _write(path: Path, text: str, mtime: int) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.utime(tmp, (mtime, mtime))
    tmp.rename(path)  # how producers must drop files: appear whole


def _drain(receive: ObjectReceiveStream[list[RawLine]]) -> list[tuple[int, bytes]]:
    out = []
    while True:
        try:
            chunk = receive.receive_nowait()
        except (anyio.WouldBlock, anyio.EndOfStream):
            return out
        out.extend((line.line, line.data) for line in chunk)


async def test_each_file_is_taken_once_in_order_until_stopped(tmp_path: Path) -> None:
    _write(tmp_path / "b.jsonl", '{"n":3}', mtime=2_000_000)  # no final newline
    _write(tmp_path / "a.jsonl", '{"n":1}\n{"n":2}\n', mtime=1_000_000)
    (tmp_path / "ignored.txt").write_text("not a match\n")
    send, receive = anyio.create_memory_object_stream[list[RawLine]](100)
    stop = anyio.Event()
    poller = Poller()
    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: watch_source(
                send,
                directory=tmp_path,
                poll_interval=0.5,
                stop=stop,
                sleep=poller.sleep,
                chunk_size=4,  # lines span chunks
            )
        )
        await poller.idle.wait()
        assert _drain(receive) == [(1, b'{"n":1}'), (2, b'{"n":2}'), (3, b'{"n":3}')]
        assert sorted(p.name for p in tmp_path.iterdir()) == [
            "a.jsonl.done",
            "b.jsonl.done",
            "ignored.txt",
        ]

        await poller.again()
        assert _drain(receive) == []  # nothing new: nothing sent, nothing re-read

        (tmp_path / "c.jsonl.tmp").write_text('{"n":4}\n')  # still being written
        await poller.again()
        assert _drain(receive) == []
        (tmp_path / "c.jsonl.tmp").rename(tmp_path / "c.jsonl")
        await poller.again()
        assert _drain(receive) == [(4, b'{"n":4}')]
        assert (tmp_path / "c.jsonl.done").exists()

        stop.set()
        poller._wake.set()
    with pytest.raises(anyio.ClosedResourceError):
        receive.receive_nowait()  # closed by us; the source closed its end too
    assert poller.intervals == [0.5, 0.5, 0.5, 0.5]


async def test_a_stopped_source_ends_its_stream_and_a_restart_skips_done_files(
    tmp_path: Path,
) -> None:
    _write(tmp_path / "old.jsonl", '{"n":1}\n', mtime=1_000_000)
    stop = anyio.Event()
    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(lambda: watch_source(send, directory=tmp_path, poll_interval=60, stop=stop))
        first = await receive.receive()
        assert [line.data for line in first] == [b'{"n":1}']
        stop.set()  # the default wait ends at once on stop, not after 60 s
        with pytest.raises(anyio.EndOfStream):
            await receive.receive()
    assert pending_files(tmp_path, "*.jsonl") == []

    _write(tmp_path / "new.jsonl", '{"n":2}\n', mtime=2_000_000)
    stop2 = anyio.Event()
    send2, receive2 = anyio.create_memory_object_stream[list[RawLine]](10)
    async with receive2, anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: watch_source(
                send2, directory=tmp_path, poll_interval=60, stop=stop2, start_line=1
            )
        )
        chunk = await receive2.receive()
        assert [(line.line, line.data) for line in chunk] == [(2, b'{"n":2}')]
        stop2.set()


async def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    send, receive = anyio.create_memory_object_stream[list[RawLine]](1)
    with send, receive, pytest.raises(NotADirectoryError, match="watched directory"):
        await watch_source(send, directory=tmp_path / "nope", stop=anyio.Event())


def test_files_claimed_by_a_crashed_run_are_taken_again_first(tmp_path: Path) -> None:
    _write(tmp_path / "new.jsonl", "{}\n", mtime=1_000_000)
    _write(tmp_path / "later.jsonl.from-12.reading", "{}\n", mtime=1_500_000)
    _write(tmp_path / "half.jsonl.from-3.reading", "{}\n", mtime=2_000_000)
    _write(tmp_path / "old.jsonl.done", "{}\n", mtime=500_000)
    names = [p.name for p in pending_files(tmp_path, "*.jsonl")]
    # in the order their lines had (not by time), then the new ones
    assert names == ["half.jsonl.from-3.reading", "later.jsonl.from-12.reading", "new.jsonl"]


async def test_a_file_is_done_only_once_the_job_accounts_for_its_lines(tmp_path: Path) -> None:
    _write(tmp_path / "a.jsonl", '{"n":1}\n{"n":2}\n', mtime=1_000_000)
    accounted = [0]
    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    stop, poller = anyio.Event(), Poller()
    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: watch_source(
                send,
                directory=tmp_path,
                stop=stop,
                sleep=poller.sleep,
                taken=TakenFiles(accounted=lambda: accounted[0]),
            )
        )
        await poller.idle.wait()
        assert _drain(receive) == [(1, b'{"n":1}'), (2, b'{"n":2}')]
        # read, but its lines may still be waiting in the pipeline: a crash now
        # must find it again
        assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl.from-1.reading"]
        accounted[0] = 1
        await poller.again()
        assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl.from-1.reading"]
        accounted[0] = 2
        await poller.again()
        assert [p.name for p in tmp_path.iterdir()] == ["a.jsonl.done"]
        assert _drain(receive) == []
        stop.set()
        poller._wake.set()


async def test_a_file_read_again_after_a_crash_keeps_its_line_numbers(tmp_path: Path) -> None:
    # the crashed run numbered half's lines 4 and 5; its ledger accounts for line 4
    _write(tmp_path / "half.jsonl.from-4.reading", '{"n":4}\n{"n":5}\n', mtime=2_000_000)
    _write(tmp_path / "new.jsonl", '{"n":6}\n', mtime=3_000_000)
    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    stop, poller = anyio.Event(), Poller()
    async with receive, anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: watch_source(
                send, directory=tmp_path, stop=stop, sleep=poller.sleep, start_line=4
            )
        )
        await poller.idle.wait()
        assert _drain(receive) == [(4, b'{"n":4}'), (5, b'{"n":5}'), (6, b'{"n":6}')]
        assert sorted(p.name for p in tmp_path.iterdir()) == ["half.jsonl.done", "new.jsonl.done"]
        stop.set()
        poller._wake.set()
