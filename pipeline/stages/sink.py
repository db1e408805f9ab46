"""Sinks: where result lines go, and the rejects writer.

A sink takes lists of raw result lines (the service's bytes, never re-encoded) and,
on ``commit``, makes them durable and returns its ``SinkPosition``, which the
results stage commits to the ledger in the same step as the batch's progress.
Sinks are awaited by the results stage: a slow sink slows the download, which
holds capacity, which stops the submitter, and so on back to the source.

- ``JsonlSink``: a JSONL file, appended in writes of about a MiB (lines are
  gathered in memory until then: one thread hop per MiB, not per group of lines),
  flushed and fsynced on commit, truncated back to the last committed offset when a
  job resumes (so every line is in the file exactly once). It also takes lines as
  the block they came in (``write_block``): no work per line at all.
- ``CallbackSink``: an async function called per result, for services. Across a
  crash, a callback may see a result again (at-least-once): only the file sink can
  be truncated back. ``rejects_callback`` is the same for rejects.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from .._errors import LedgerError
from ..api._types import ResultLine
from ..ledger._base import SinkPosition
from ._files import open_file, opened
from ._items import RejectLine

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from aiofiles.threadpool.binary import AsyncBufferedIOBase

    from ..ledger._base import Ledger
    from ._protocol import JobCounters

__all__ = ("CallbackSink", "JsonlSink", "ResultSink", "rejects_callback", "rejects_writer")

#: Bytes of lines a ``JsonlSink`` gathers before it writes them to the file.
WRITE_BYTES = 1 << 20

_result_decoder = msgspec.json.Decoder(ResultLine)
_reject_encoder = msgspec.json.Encoder()
_reject_decoder = msgspec.json.Decoder(RejectLine)


class ResultSink(Protocol):
    """What the results stage writes to."""

    async def open(self, position: SinkPosition) -> None:
        """Start at ``position`` (the last commit of a resumed job, else empty)."""
        ...

    async def write(self, lines: list[bytes]) -> None:
        """Append lines (without terminators)."""
        ...

    @property
    def position(self) -> SinkPosition:
        """What has been written so far (committed or not)."""
        ...

    async def commit(self) -> SinkPosition:
        """Make everything written durable; the position to record."""
        ...

    async def aclose(self) -> None: ...


class JsonlSink:
    """A JSONL file: appended in MiB writes, fsynced on commit, truncated on resume."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._file: AsyncBufferedIOBase | None = None
        self._offset = 0
        self._count = 0
        #: blocks of lines and their newlines, not yet handed to the file; their size
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def __repr__(self) -> str:
        return f"JsonlSink({str(self.path)!r})"

    @property
    def position(self) -> SinkPosition:
        """What has been written (committed or not)."""
        return SinkPosition(self._offset, self._count)

    async def open(self, position: SinkPosition) -> None:
        await anyio.to_thread.run_sync(self._truncate, position.offset)
        self._file = await open_file(self.path, "ab")
        self._offset, self._count = position.offset, position.count

    def _truncate(self, offset: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "ab") as handle:
            size = handle.seek(0, os.SEEK_END)
            if size < offset:
                raise self._cut_short(size, offset)
            if size > offset:
                handle.truncate(offset)

    async def check(self, position: SinkPosition) -> None:
        """Raise ``LedgerError`` when the file is shorter than ``position`` (cut short
        or replaced since it was written); nothing is changed. For a finished job's
        re-run, which opens no sink."""
        try:
            size = (await anyio.Path(self.path).stat()).st_size
        except FileNotFoundError:
            size = 0
        if size < position.offset:
            raise self._cut_short(size, position.offset)

    def _cut_short(self, size: int, offset: int) -> LedgerError:
        return LedgerError(
            str(self.path),
            f"is {size:,} bytes, shorter than the {offset:,} bytes the job's state file "
            "says were written to it (was it cut short or replaced?); restore it, or remove "
            "the state file and run the job again with --overwrite",
            what="file",
        )

    async def write(self, lines: list[bytes]) -> None:
        """Append lines; they reach the file once about a MiB is gathered, or on
        ``commit`` (the position counts them at once)."""
        if lines:
            await self._append(b"\n".join(lines), len(lines))

    async def write_block(self, block: bytes, count: int) -> None:
        """Append ``count`` lines given as one block, joined by ``\\n`` (as
        a ``BlockSplitter`` gives them, without CRs or blank lines): what
        ``write`` does with its lines, without a ``bytes`` object per line."""
        if count:
            await self._append(block, count)

    async def _append(self, block: bytes, count: int) -> None:
        assert self._file is not None, "sink not open"
        size = len(block) + 1
        self._pending += (block, b"\n")
        self._pending_bytes += size
        self._offset += size
        self._count += count
        if self._pending_bytes >= WRITE_BYTES:
            await self._write_pending()
        else:
            await anyio.lowlevel.checkpoint()

    async def _write_pending(self) -> None:
        if not self._pending or self._file is None:
            return
        pending, self._pending, self._pending_bytes = self._pending, [], 0
        # the pieces as they are: a block of a MiB is not copied again to be joined
        await self._file.writelines(pending)

    async def commit(self) -> SinkPosition:
        """Write what is gathered, flush and fsync; the durable position."""
        assert self._file is not None, "sink not open"
        await self._write_pending()
        await self._file.flush()
        await anyio.to_thread.run_sync(os.fsync, self._file.fileno())
        return self.position

    async def read_range(self, start: int, end: int) -> bytes:
        """Bytes ``start``..``end`` of the file (to look at lines already written)."""
        await self._write_pending()
        if self._file is not None:
            await self._file.flush()
        async with opened(self.path) as handle:
            await handle.seek(start)
            data: bytes = await handle.read(end - start)
        return data

    async def aclose(self) -> None:
        """Close the file (idempotent); nothing is committed (fsynced) here, what was
        written reaches the file (a resumed job truncates it back to its commit)."""
        if self._file is not None:
            with anyio.CancelScope(shield=True):
                try:
                    await self._write_pending()
                finally:
                    handle, self._file = self._file, None
                    self._pending, self._pending_bytes = [], 0
                    await handle.close()


class CallbackSink:
    """Calls ``fn`` for each result: with the decoded ``ResultLine`` (default) or,
    with ``raw=True``, the line's bytes. The pipeline awaits ``fn``: a slow
    callback slows the job down rather than buffering results."""

    def __init__(
        self,
        fn: Callable[[Any], Awaitable[object]],
        *,
        raw: bool = False,
        decoder: msgspec.json.Decoder[Any] = _result_decoder,
    ) -> None:
        self.fn = fn
        self.raw = raw
        #: what each line is decoded into (``ResultLine``; ``RejectLine`` for rejects)
        self._decode = decoder.decode
        self._count = 0

    def __repr__(self) -> str:
        return f"CallbackSink({self.fn!r})"

    @property
    def position(self) -> SinkPosition:
        return SinkPosition(0, self._count)

    async def open(self, position: SinkPosition) -> None:
        self._count = position.count

    async def write(self, lines: list[bytes]) -> None:
        for line in lines:
            await self.fn(line if self.raw else self._decode(line))
            self._count += 1

    async def commit(self) -> SinkPosition:
        await anyio.lowlevel.checkpoint()
        return self.position

    async def aclose(self) -> None:
        await anyio.lowlevel.checkpoint()


def rejects_callback(fn: Callable[[RejectLine], Awaitable[object]]) -> CallbackSink:
    """A sink for ``rejects_writer`` that calls ``fn`` with each reject as a
    ``RejectLine`` (``line``, ``custom_id``, ``error``). Like the result callback it
    is at-least-once: a reject handed to ``fn`` but not yet committed to the ledger
    when the process dies is handed over again on the next start."""
    return CallbackSink(fn, decoder=_reject_decoder)


#: rejects read from the ledger per round
_REJECTS_PAGE = 10_000


async def rejects_writer(
    *,
    ledger: Ledger,
    sink: ResultSink | None,
    progress: JobCounters,
    position: SinkPosition,
    done: anyio.Event,
) -> None:
    """Copy rejects from the ledger to the rejects sink (a ``JsonlSink`` file or a
    ``rejects_callback``) as they are recorded, and commit the sink's position;
    ends once ``done`` is set and all are written
    (whoever sets ``done`` also sets ``progress.rejects_recorded`` to wake it).

    The ledger is the source of truth (rejects are recorded with the checkpoint in
    the same transaction), so a crash between the two loses nothing: the copy
    resumes from the committed count.
    """
    count = position.count
    while True:
        finishing = done.is_set()
        progress.rejects_recorded = anyio.Event()
        while True:
            rejects = await ledger.rejects_after(count, _REJECTS_PAGE)
            if not rejects:
                break
            count += len(rejects)
            if sink is not None:
                await sink.write(
                    [
                        _reject_encoder.encode(RejectLine(r.line, r.custom_id, r.error))
                        for r in rejects
                    ]
                )
                await ledger.commit_rejects(await sink.commit())
            else:
                await ledger.commit_rejects(SinkPosition(0, count))
        if finishing:
            return
        await progress.rejects_recorded.wait()
