"""Chunker: packs entries into batches that respect the request-count limit and the
exact byte size of the create body, and a linger time so that a trickling source
still gets its batch out.

The body is ``{"requests":[`` + the entries' bytes joined by ``,`` + ``]}``, so its
size is known exactly before it is built; a request is never split and a body is
never over ``max_batch_bytes`` (validate rejected any entry that could not fit).
Rejects travel with the next chunk, so the ledger records them in input order
together with the source checkpoint.

One chunk at a time (``PipelineConfig.low_memory``): with a ``ChunkHandoff``, the
chunker takes no more input (packs nothing) and hands nothing over while the
submitter holds the last chunk it was given; it waits until the submitter asks for
the next one (it let go of the last) or has ended. Upstream backpressure then keeps
the rest of the input in the file: a chunk being sent (or waiting for room at the
service) is the only one in memory, not a second one packed meanwhile. With
``drop_file_bytes`` too, the entries whose bytes are the input file's own go on
without them (``raw`` empty; the submitter reads them back by offset), so a chunk
holds its requests' ids and positions, not their bodies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar
from zlib import crc32

import anyio
from anyio.abc import ObjectReceiveStream

from ._items import Entry, Flush, Reject, Watermark
from ._protocol import ENVELOPE_BYTES, Chunk

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import ObjectSendStream

    from .._config import PipelineConfig
    from ._protocol import JobCounters
    from ._user import HeldLines

__all__ = ("ChunkHandoff", "Packer", "chunker")

T = TypeVar("T")


class ChunkHandoff:
    """The handshake of one chunk at a time between the chunker and the submitter
    (``PipelineConfig.low_memory``; the runner makes one per run).

    The chunker calls ``handing()`` as it hands a chunk over, and ``await ready()``
    before it takes more input or hands over another: ``ready()`` returns once the
    submitter let go of every chunk it was handed. The submitter's end of the chunk
    stream, wrapped by ``receiver(stream)``, says so by itself: asking for the next
    chunk lets go of the last, closing the stream (the submitter ended, on a stop
    too) ends the handshake for good, so a chunker never waits on a submitter that
    is gone. A submitter that takes its chunks one by one needs no change; to hold
    only one, it drops its reference to a chunk before it asks for the next
    (``pipeline.stages.submitter`` does)."""

    def __init__(self) -> None:
        self._pending = 0
        self._closed = False
        self._idle = anyio.Event()
        self._idle.set()

    @property
    def pending(self) -> int:
        """Chunks handed over and not let go of yet."""
        return self._pending

    @property
    def closed(self) -> bool:
        """Whether the submitter's end was closed (the handshake is over)."""
        return self._closed

    def handing(self) -> None:
        """The chunker is handing a chunk over (call it before the send)."""
        if self._pending == 0 and not self._closed:
            self._idle = anyio.Event()
        self._pending += 1

    def released(self) -> None:
        """The submitter let go of the chunk it held."""
        self._pending = max(self._pending - 1, 0)
        if self._pending == 0:
            self._idle.set()

    def close(self) -> None:
        """The submitter ended: nothing waits for it any more."""
        self._closed = True
        self._idle.set()

    async def ready(self) -> None:
        """Wait until the submitter holds no chunk (or has ended)."""
        await self._idle.wait()

    def receiver(self, stream: ObjectReceiveStream[T]) -> ObjectReceiveStream[T]:
        """``stream`` (the submitter's end of the chunk stream) telling this handshake
        when the submitter asks for the next chunk and when it closes."""
        return _HandoffReceiver(self, stream)


class _HandoffReceiver(ObjectReceiveStream[T]):
    """The submitter's end of the chunk stream under a ``ChunkHandoff``."""

    def __init__(self, handoff: ChunkHandoff, stream: ObjectReceiveStream[T]) -> None:
        self._handoff = handoff
        self._stream = stream
        self._holding = False

    async def receive(self) -> T:
        if self._holding:  # asking for the next: done with the last
            self._holding = False
            self._handoff.released()
        item = await self._stream.receive()
        self._holding = True
        return item

    async def aclose(self) -> None:
        self._holding = False
        self._handoff.close()
        await self._stream.aclose()


class Packer:
    """Sync and I/O-free: ``add(items)`` returns the chunks that are full,
    ``flush()`` the partial one. Tracks the source position the chunks stand at."""

    def __init__(self, *, max_requests: int, max_bytes: int, held: HeldLines | None = None) -> None:
        self.max_requests = max_requests
        #: items user stages hold (None: no user stage on the request side)
        self.held = held
        #: custom_ids the retry feeder sent (not counted in ``held``)
        self.retry_ids: set[str] = set()
        self.max_bytes = max_bytes
        self.entries: list[Entry] = []
        self.rejects: list[Reject] = []
        self.size = ENVELOPE_BYTES
        #: source position (byte offset after line ``line``) of the items seen
        self.checkpoint = 0
        self.line = 0
        #: entries in the last ``add``; whether a final ``Flush`` was seen
        self.entries_added = 0
        self.final = False
        #: the cap a ``Watermark`` put on checkpoints (None: no cap); a stop's for good
        self.cap_end: int | None = None
        self.cap_line: int | None = None
        self.stopped = False

    def add(self, items: list[Entry | Reject | Flush | Watermark]) -> tuple[list[Chunk], bool]:
        """Pack ``items``; the chunks completed, and whether a ``Flush`` came.
        ``entries_added`` and ``final`` tell how many entries came and whether a final
        ``Flush`` did (so callers need no second pass over ``items``)."""
        chunks: list[Chunk] = []
        flushed = False
        max_requests, max_bytes = self.max_requests, self.max_bytes
        # one pass, with the position, the open chunk and its size kept in locals
        # (this loop runs per request): they go back to self before any other call
        checkpoint, last_line = self.checkpoint, self.line
        entries, size, added = self.entries, self.size, 0
        held = self.held
        for item in items:
            if held is not None and (
                type(item) is Reject
                or (
                    type(item) is Entry
                    and item.attempt == 1
                    and item.custom_id not in self.retry_ids  # released: back from the spool
                )
            ):
                held.resolve(item.line)
            if type(item) is Entry:
                added += 1
                # an entry without its bytes (a retry read back) is its file line's size
                line_bytes = len(item.raw) or item.end - item.offset - 1
                grow = line_bytes + (1 if entries else 0)
                if entries and (len(entries) >= max_requests or size + grow > max_bytes):
                    self.checkpoint, self.line, self.size = checkpoint, last_line, size
                    chunks.append(self._take())
                    entries, size = self.entries, self.size
                    grow = line_bytes
                entries.append(item)
                size += grow
                if item.end > checkpoint:
                    checkpoint = item.end
                if item.line > last_line:
                    last_line = item.line
            elif isinstance(item, Reject):
                self.rejects.append(item)
                # retries from the spool stand before the position: keep it monotonic
                if item.end > checkpoint:
                    checkpoint = item.end
                if item.line > last_line:
                    last_line = item.line
            elif type(item) is Watermark:
                self.checkpoint, self.line = checkpoint, last_line
                self._cap(item)
            else:
                assert isinstance(item, Flush)
                flushed = True
                self.final = self.final or item.final
                if item.end > checkpoint:
                    checkpoint = item.end
                self.checkpoint, self.line, self.size = checkpoint, last_line, size
                if entries or self.rejects:
                    chunks.append(self._take())
                    entries, size = self.entries, self.size
        self.checkpoint, self.line, self.size = checkpoint, last_line, size
        self.entries_added = added
        if entries and len(entries) >= max_requests:
            chunks.append(self._take())
        return chunks, flushed

    def _cap(self, mark: Watermark) -> None:
        if mark.stop:
            self.stopped = True
            self.cap_end = _lowest(self.cap_end, mark.end)
            self.cap_line = _lowest(self.cap_line, mark.line)
        elif not self.stopped:
            self.cap_end, self.cap_line = mark.end, mark.line

    def flush(self) -> Chunk | None:
        """The partial chunk, if anything is pending."""
        return self._take() if self.entries or self.rejects else None

    @property
    def pending(self) -> int:
        return len(self.entries)

    def _take(self) -> Chunk:
        checkpoint, line = self.checkpoint, self.line
        if self.cap_end is not None and self.cap_end < checkpoint:
            checkpoint = self.cap_end
        if self.cap_line is not None and self.cap_line < line:
            line = self.cap_line
        if self.held is not None:
            cap_end, cap_line = self.held.cap()
            if cap_end is not None and cap_end < checkpoint:
                checkpoint = cap_end
            if cap_line is not None and cap_line < line:
                line = cap_line
        chunk = Chunk(self.entries, self.rejects, checkpoint, line, self.size)
        self.entries, self.rejects, self.size = [], [], ENVELOPE_BYTES
        return chunk


def _lowest(current: int | None, new: int | None) -> int | None:
    if current is None:
        return new
    return current if new is None else min(current, new)


async def chunker(
    receive: ObjectReceiveStream[list[Entry | Reject | Flush | Watermark]],
    send: ObjectSendStream[Chunk],
    /,
    *,
    config: PipelineConfig,
    progress: JobCounters | None = None,
    held: HeldLines | None = None,
    clock: Callable[[], float] = anyio.current_time,
    timeout: Callable[[float], anyio.CancelScope] = anyio.move_on_after,
    handoff: ChunkHandoff | None = None,
    drop_file_bytes: bool = False,
) -> None:
    """Pack entries into chunks; send each when full, on a ``Flush``, or
    ``linger_seconds`` after the first entry of a partial chunk arrived.

    ``clock`` and ``timeout`` are injected so tests run the linger in virtual time.
    A final ``Flush`` (the source is done) is reported to ``progress``. ``held``:
    the items user stages hold (``HeldLines``): no checkpoint passes one of them.
    ``handoff``: one chunk at a time (see ``ChunkHandoff``): no input is taken and
    no chunk handed over while the submitter holds the last one.
    ``drop_file_bytes``: the entries whose bytes are the input file's own (read
    from it, not rewritten, no ``\\r`` before the ``\\n``) lose them once packed
    (``raw`` becomes empty): only for a submitter given the file
    (``submitter(..., input_path=...)``), which reads them back.
    """
    packer = Packer(
        max_requests=config.max_batch_requests, max_bytes=config.max_batch_bytes, held=held
    )
    if progress is not None:
        packer.retry_ids = progress.retry_ids
    deadline: float | None = None
    async with receive, send:
        while True:
            items: list[Entry | Reject | Flush | Watermark] | None = None
            if handoff is not None and handoff.pending:
                # pack nothing while the submitter holds a chunk; the partial chunk's
                # linger counts only the time in which more input could come
                waited_from = clock()
                await handoff.ready()
                if deadline is not None:
                    deadline += clock() - waited_from
            try:
                if deadline is None:
                    items = await receive.receive()
                else:
                    with timeout(deadline - clock()):
                        items = await receive.receive()
            except anyio.EndOfStream:
                break
            if items is None:  # the linger time is up
                await _send_all(send, _flushed(packer), handoff)
                deadline = None
                continue
            final_before = packer.final
            chunks, _ = packer.add(items)
            if drop_file_bytes:
                _drop_file_bytes(items)
            del items
            if progress is not None:
                progress.outstanding += packer.entries_added
            sent_entries = any(c.entries for c in chunks)
            await _send_all(send, chunks, handoff)
            if progress is not None and packer.final and not final_before:
                progress.source_done = True
                progress.changed()
            if packer.pending == 0 or sent_entries:
                deadline = None  # a new partial chunk lingers from now on
            if packer.pending and deadline is None:
                deadline = clock() + config.linger_seconds
        await _send_all(send, _flushed(packer), handoff)


async def _send_all(
    send: ObjectSendStream[Chunk], chunks: list[Chunk], handoff: ChunkHandoff | None
) -> None:
    """Send the chunks in order, keeping no reference to one the submitter took
    (its entries are freed as soon as the submitter is done with them); with a
    ``handoff``, each only once the submitter let go of the last."""
    chunks.reverse()
    while chunks:
        if handoff is not None:
            await handoff.ready()
            handoff.handing()
        await send.send(chunks.pop())


def _drop_file_bytes(items: list[Entry | Reject | Flush | Watermark]) -> None:
    """Take the bytes off the entries of ``items`` (packed already) whose ``raw`` is
    the input file's bytes from ``offset`` up to the line's ``\\n`` at ``end - 1``:
    read from the file, not rewritten by a stage (which sets ``offset`` -1), no
    ``\\r`` before the ``\\n``. Each keeps the CRC-32 of its bytes: the submitter
    reads them back (``InputBody``) and sends nothing of a line that changed since."""
    for item in items:
        if type(item) is Entry and item.offset >= 0 and item.end - item.offset - 1 == len(item.raw):
            item.crc32 = crc32(item.raw)
            item.raw = b""


def _flushed(packer: Packer) -> list[Chunk]:
    chunk = packer.flush()
    return [chunk] if chunk is not None else []
