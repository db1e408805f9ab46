"""Chunker: packs entries into batches that respect the request-count limit and the
exact byte size of the create body, and a linger time so that a trickling source
still gets its batch out.

The body is ``{"requests":[`` + the entries' bytes joined by ``,`` + ``]}``, so its
size is known exactly before it is built; a request is never split and a body is
never over ``max_batch_bytes`` (validate rejected any entry that could not fit).
Rejects travel with the next chunk, so the ledger records them in input order
together with the source checkpoint.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from ._items import Entry, Flush, Reject
from ._protocol import ENVELOPE_BYTES, Chunk

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import ObjectReceiveStream, ObjectSendStream

    from .._config import PipelineConfig
    from ._protocol import Progress

__all__ = ("Packer", "chunker")


class Packer:
    """Sync and I/O-free: ``add(items)`` returns the chunks that are full,
    ``flush()`` the partial one. Tracks the source position the chunks stand at."""

    def __init__(self, *, max_requests: int, max_bytes: int) -> None:
        self.max_requests = max_requests
        self.max_bytes = max_bytes
        self.entries: list[Entry] = []
        self.rejects: list[Reject] = []
        self.size = ENVELOPE_BYTES
        #: source position (byte offset after line ``line``) of the items seen
        self.checkpoint = 0
        self.line = 0

    def add(self, items: list[Entry | Reject | Flush]) -> tuple[list[Chunk], bool]:
        """Pack ``items``; the chunks completed, and whether a ``Flush`` came."""
        chunks: list[Chunk] = []
        flushed = False
        for item in items:
            if isinstance(item, Entry):
                grow = len(item.raw) + (1 if self.entries else 0)
                if self.entries and (
                    len(self.entries) >= self.max_requests or self.size + grow > self.max_bytes
                ):
                    chunks.append(self._take())
                    grow = len(item.raw)
                self.entries.append(item)
                self.size += grow
                self._moved(item.end, item.line)
            elif isinstance(item, Reject):
                self.rejects.append(item)
                self._moved(item.end, item.line)
            else:
                flushed = True
                self._moved(item.end, self.line)
                if self.entries or self.rejects:
                    chunks.append(self._take())
        if self.entries and len(self.entries) >= self.max_requests:
            chunks.append(self._take())
        return chunks, flushed

    def flush(self) -> Chunk | None:
        """The partial chunk, if anything is pending."""
        return self._take() if self.entries or self.rejects else None

    @property
    def pending(self) -> int:
        return len(self.entries)

    def _moved(self, end: int, line: int) -> None:
        # retries from the spool stand before the position: max() keeps it monotonic
        self.checkpoint = max(self.checkpoint, end)
        self.line = max(self.line, line)

    def _take(self) -> Chunk:
        chunk = Chunk(self.entries, self.rejects, self.checkpoint, self.line, self.size)
        self.entries, self.rejects, self.size = [], [], ENVELOPE_BYTES
        return chunk


async def chunker(
    receive: ObjectReceiveStream[list[Entry | Reject | Flush]],
    send: ObjectSendStream[Chunk],
    /,
    *,
    config: PipelineConfig,
    progress: Progress | None = None,
    clock: Callable[[], float] = anyio.current_time,
    timeout: Callable[[float], anyio.CancelScope] = anyio.move_on_after,
) -> None:
    """Pack entries into chunks; send each when full, on a ``Flush``, or
    ``linger_seconds`` after the first entry of a partial chunk arrived.

    ``clock`` and ``timeout`` are injected so tests run the linger in virtual time.
    A final ``Flush`` (the source is done) is reported to ``progress``.
    """
    packer = Packer(max_requests=config.max_batch_requests, max_bytes=config.max_batch_bytes)
    deadline: float | None = None
    async with receive, send:
        while True:
            items: list[Entry | Reject | Flush] | None = None
            try:
                if deadline is None:
                    items = await receive.receive()
                else:
                    with timeout(deadline - clock()):
                        items = await receive.receive()
            except anyio.EndOfStream:
                break
            if items is None:  # the linger time is up
                chunk = packer.flush()
                if chunk is not None:
                    await send.send(chunk)
                deadline = None
                continue
            if progress is not None:
                progress.outstanding += sum(isinstance(i, Entry) for i in items)
            chunks, _ = packer.add(items)
            for chunk in chunks:
                await send.send(chunk)
            if progress is not None and any(isinstance(i, Flush) and i.final for i in items):
                progress.source_done = True
                progress.changed()
            if packer.pending == 0 or any(c.entries for c in chunks):
                deadline = None  # a new partial chunk lingers from now on
            if packer.pending and deadline is None:
                deadline = clock() + config.linger_seconds
        chunk = packer.flush()
        if chunk is not None:
            await send.send(chunk)
