"""The retry feeder: closes the loop from the results back to the chunker through the
ledger's disk-backed spool, so the cycle never deadlocks under backpressure.

The results stage commits retryable requests to the spool (on disk) and never
waits on this task; this task takes a round of spooled requests, reads their bytes
back from the input file (one handle, reads sorted by offset and coalesced) or from
the spool itself (iterable sources), and sends them into the chunker with a
``Flush``. It takes the next round only once the last one was claimed (requests
stay in the spool until then). A line read back must still be the request's line
(where it was, as long, holding its custom_id): else the input changed under the
job, and ``InputChangedError`` ends it with the requests still in the spool. With
``drop_file_bytes`` (the runner's, for its own submitter) the round waits without
its lines' bytes, only their CRC-32: the submitter reads them again as it sends.

It also has the ledger settle the requests it deferred (``Ledger.resolve_deferred``)
once the input was read to its end or nothing else is under way, and decides when
the chunker's input closes: once the source is done, nothing is outstanding (in the
stages or at the service), and the spool is empty and nothing deferred; or at once
when the pipeline is stopping (spooled and deferred requests wait for the next
start).
"""

from __future__ import annotations

import os
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING
from zlib import crc32

import anyio
import msgspec

from ._files import opened
from ._items import Entry, Flush, Reject
from .submitter import InputChangedError

if TYPE_CHECKING:
    from aiofiles.threadpool.binary import AsyncBufferedReader
    from anyio.abc import ObjectSendStream

    from .._config import PipelineConfig
    from ..ledger._base import Ledger, SpoolItem
    from ._protocol import JobCounters

__all__ = ("read_back", "retry_feeder")

#: reads of spooled lines closer than this are done as one read: a ``pread`` of a line
#: from the page cache costs about what copying 16 KiB does
_COALESCE_GAP = 16 * 1024
#: one read at the most: a MiB, as the source's and the sink's. A larger block, freed
#: once its lines are cut out, raises glibc's mmap threshold to its size, and every
#: smaller block is served from the heaps from then on (a job of ten million resumed
#: with 10,000 requests to send again read them in one 6.8 MB block: its peak was
#: 155.4 MB, 153.0 with reads of a MiB, 3 runs each)
_MAX_READ = 1 << 20

_encode = msgspec.json.encode


class _Identified(msgspec.Struct):
    custom_id: str


_identified = msgspec.json.Decoder(_Identified).decode


def _holds(line: bytes, item: SpoolItem) -> bool:
    """Whether ``line``, read back at ``item.offset`` for ``item.length`` bytes, is
    still the request's line: its whole line (a ``\\n`` only at its end) holding its
    custom_id. The id is looked for as encoded here (no parse); a line that writes it
    otherwise (other escapes) is parsed. An edit that keeps the line's place, size
    and id is not seen (README, "leave the input as it is")."""
    if len(line) != item.length or line.find(b"\n") not in (-1, len(line) - 1):
        return False
    if _encode(item.custom_id) in line:
        return True
    try:
        return _identified(line).custom_id == item.custom_id
    except msgspec.DecodeError:  # also a line that is no longer a request
        return False


async def read_back(
    items: list[SpoolItem],
    handle: AsyncBufferedReader | None,
    path: str | os.PathLike[str] | None,
    *,
    drop_file_bytes: bool = False,
) -> list[Entry]:
    """Entries for spooled requests, in spool order; file-backed ones are read from
    ``handle`` (the input ``path``) with one read per run of nearby lines, sorted by
    offset, all in one call to a worker thread (``os.pread``: not two calls, a seek
    and a read, each a thread's turn, per line: the lines of a round are scattered
    through the input), and each checked (``_holds``): ``InputChangedError`` names
    the first that changed.

    ``drop_file_bytes``: an entry whose bytes are the file's line up to its ``\\n``
    keeps only their CRC-32, as the chunker's ``drop_file_bytes`` leaves it (the
    submitter's ``InputBody`` reads the line again as it sends, and checks it): a
    round of retries waits in the chunker's queue without its bytes."""
    by_offset = sorted(
        (i for i, item in enumerate(items) if item.raw is None), key=lambda i: items[i].offset
    )
    data: dict[int, bytes | int] = {}
    if by_offset:
        if handle is None:
            raise RuntimeError("spooled requests of a file source, but no file to read them from")
        data = await anyio.to_thread.run_sync(
            _read_lines, handle.fileno(), items, by_offset, path, drop_file_bytes
        )
    out = []
    for i, item in enumerate(items):
        if item.raw is not None:
            out.append(Entry(item.line, item.custom_id, item.raw, item.offset, -1, item.attempt))
            continue
        kept, end = data[i], item.offset + item.length
        if isinstance(kept, bytes):
            out.append(Entry(item.line, item.custom_id, kept, item.offset, end, item.attempt))
        else:  # without its bytes: the line up to its "\n", read again when sent
            entry = Entry(item.line, item.custom_id, b"", item.offset, end, item.attempt)
            entry.crc32 = kept
            out.append(entry)
    return out


def _read_lines(
    fd: int,
    items: list[SpoolItem],
    by_offset: list[int],
    path: str | os.PathLike[str] | None,
    drop_file_bytes: bool,
) -> dict[int, bytes | int]:
    """(In a worker thread) the line of each of ``items`` at ``by_offset`` (their
    indices, by offset), checked, by index: its bytes, or (``drop_file_bytes``: a
    line ending in a lone ``\\n``) only its CRC-32, taken as it is read (a round's
    lines are never all held at once)."""
    data: dict[int, bytes | int] = {}
    k = 0
    while k < len(by_offset):
        first = items[by_offset[k]]
        j, end = k, first.offset + first.length
        while j + 1 < len(by_offset):
            nxt = items[by_offset[j + 1]]
            if (
                nxt.offset - end > _COALESCE_GAP
                or nxt.offset + nxt.length - first.offset > _MAX_READ
            ):
                break
            j, end = j + 1, max(end, nxt.offset + nxt.length)
        span = os.pread(fd, end - first.offset, first.offset)
        for i in by_offset[k : j + 1]:
            item = items[i]
            start = item.offset - first.offset
            line = span[start : start + item.length]
            if not _holds(line, item):
                found = f"is no longer at byte {item.offset:,}, where it is read back from"
                raise InputChangedError.at(path, item, found, "it waits in the spool")
            raw = line.rstrip(b"\r\n")
            data[i] = crc32(raw) if drop_file_bytes and len(raw) == item.length - 1 else raw
        k = j + 1
    return data


async def retry_feeder(
    send: ObjectSendStream[list[Entry | Reject | Flush]],
    /,
    *,
    ledger: Ledger,
    config: PipelineConfig,
    progress: JobCounters,
    path: str | os.PathLike[str] | None = None,
    drop_file_bytes: bool = False,
) -> None:
    """Feed spooled requests back into the chunker until the job's cycle is done.
    ``drop_file_bytes``: a round's lines of the input file go without their bytes
    (``read_back``), for a submitter that reads them back (``InputBody``)."""
    # the stream first: it is closed even when cancelled while the input opens
    async with send, AsyncExitStack() as files:
        handle = await files.enter_async_context(opened(path)) if path is not None else None
        while not progress.stopping:
            if progress.spooled > 0 and progress.retry_unclaimed <= 0:
                items = await ledger.take_spool(config.max_batch_requests)
                if items:
                    # without their bytes (read again as the batch is sent): a round of
                    # 10,000 waits beside the source's lines (6.8 MB at a resume)
                    entries: list[Entry | Reject | Flush] = [
                        *await read_back(items, handle, path, drop_file_bytes=drop_file_bytes)
                    ]
                    progress.retry_unclaimed += len(entries)
                    progress.retry_ids.update(item.custom_id for item in items)
                    # the spool's rows are let go before the round waits to be taken
                    # (10,000 of them: about 3 MB)
                    del items
                    entries.append(Flush())
                    await send.send(entries)
                    continue
                progress.spooled = 0  # the ledger knows best
            if (
                progress.deferred > 0
                and (progress.source_done or progress.outstanding <= 0)
                and progress.spooled <= 0
                and progress.retry_unclaimed <= 0
            ):
                # the input was read to its end, or nothing else is under way (a
                # source that keeps coming): settle what the ledger deferred (new
                # ones to the spool, to be sent; copies to the rejects)
                settled = await ledger.resolve_deferred()
                progress.note_settled(settled.settled, settled.released, settled.rejected)
                if settled.settled:
                    continue
            if progress.cycle_done:
                return
            await progress.wait_changed()
