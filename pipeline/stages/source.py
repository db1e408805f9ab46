"""Sources: where the requests come from.

``jsonl_source`` reads a JSONL file in large chunks through aiofiles (one thread hop
per MiB, never per line), splits the lines in the loop and sends one
``list[RawLine]`` per chunk. A line's ``data`` keeps a ``\r`` before its ``\n``:
validate strips it, as it needs the original length for the resume position
(``offset + len(data) + 1``). ``iterable_source`` takes any sync or async iterable of
entries (dicts, Structs, or already-encoded bytes). Both stop between chunks when
the pipeline is stopping, so a graceful stop does not read further input.

An entry msgspec cannot encode (a dict holding an arbitrary object, a string with a
lone surrogate, a cycle) must not end the job: it becomes a ``RawLine`` whose data
starts with ``UNENCODABLE_PREFIX`` (no JSON text starts with a NUL byte) followed by
the reason, and the validate stage turns that into a reject of its line
(``unencodable_reason``).

A UTF-8 byte order mark at the start of a file (some Windows tools write one) is not
part of line 1: line 1 starts after it.

A line longer than ``max_line`` (a batch body's size: no batch could hold it) is not
gathered in memory: a file without newlines (a JSON array passed for JSONL, say)
would otherwise be held whole. Its bytes are skipped up to its newline, and it comes
out as a stand-in whose data starts with ``OVERSIZE_PREFIX`` (its custom_id, when it
opens the line, and its length; ``RawLine.size`` keeps the position right), which the
validate stage rejects as ``request_too_large`` (``oversize_reason``).
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterable
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from .._errors import InputError
from ._files import opened
from ._items import RawLine

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Iterable

    from anyio.abc import ObjectSendStream
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

__all__ = (
    "DEFAULT_CHUNK_SIZE",
    "OVERSIZE_PREFIX",
    "UNENCODABLE_PREFIX",
    "LineReader",
    "entry_line",
    "iterable_source",
    "jsonl_source",
    "oversize_reason",
    "unencodable_reason",
)

DEFAULT_CHUNK_SIZE = 1 << 20
#: How long closing an interrupted async iterable may take, in seconds.
_CLOSE_SECONDS = 5.0
_encoder = msgspec.json.Encoder()
#: Starts the data of a line standing for an entry that could not be encoded.
UNENCODABLE_PREFIX = b"\x00unencodable\x00"
#: What encoding an arbitrary Python value can raise.
_ENCODE_ERRORS = (TypeError, ValueError, OverflowError, RecursionError, msgspec.EncodeError)
_MAX_REASON = 300
#: Starts the data of a line standing for one too long to hold (see the module doc).
OVERSIZE_PREFIX = b"\x00oversize\x00"
#: The custom_id of a line that opens with it: all an oversize line's stand-in keeps.
_LEADING_ID = re.compile(rb'\s*\{\s*"custom_id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')
_HEAD_BYTES = 256
_BOM = b"\xef\xbb\xbf"


class LineReader:
    """Sync and I/O-free: turns file chunks into ``RawLine``s with 1-based line
    numbers and the byte offset of each line's start. The ``\\n`` is stripped (a
    ``\\r`` before it is kept, see the module doc); a final line without a newline
    comes out of ``flush``."""

    __slots__ = ("_bom", "_head", "_line", "_max_line", "_offset", "_skipped", "_tail")

    def __init__(
        self, *, start_offset: int = 0, start_line: int = 0, max_line: int | None = None
    ) -> None:
        self._offset = start_offset  # offset of the first byte not yet returned
        self._line = start_line  # number of the last line returned
        self._tail = b""
        #: a line longer than this is skipped, not held (None: no limit)
        self._max_line = max_line
        #: bytes skipped of the oversize line being read (-1: none), and its start
        self._skipped = -1
        self._head = b""
        #: still to look for a UTF-8 byte order mark (at the start of a file only)
        self._bom = start_offset == 0

    def feed(self, chunk: bytes) -> list[RawLine]:
        """The complete lines ``chunk`` finishes."""
        out: list[RawLine] = []
        if self._bom:  # a file written with a BOM (Windows tools): not part of line 1
            chunk, self._tail = self._tail + chunk, b""
            if len(chunk) < len(_BOM) and _BOM.startswith(chunk):
                self._tail = chunk  # too short to tell yet
                return out
            self._bom = False
            if chunk.startswith(_BOM):
                chunk = chunk[len(_BOM) :]
                self._offset += len(_BOM)
        if self._skipped >= 0:  # inside an oversize line: drop up to its newline
            end = chunk.find(b"\n")
            if end < 0:
                self._skipped += len(chunk)
                return out
            self._skipped += end
            out.append(self._oversize(newline=True))
            chunk = chunk[end + 1 :]
        if self._tail:
            chunk = self._tail + chunk
        parts = chunk.split(b"\n")
        self._tail = parts.pop()
        out += self._lines(parts)
        if self._max_line is not None and len(self._tail) > self._max_line:
            self._head, self._skipped, self._tail = self._tail[:_HEAD_BYTES], len(self._tail), b""
        return out

    def flush(self) -> list[RawLine]:
        """The last line if the input did not end with a newline."""
        if self._skipped >= 0:
            return [self._oversize(newline=False)]
        tail, self._tail = self._tail, b""
        if not tail:
            return []
        lines = self._lines([tail])
        self._offset -= 1  # there was no newline after it
        return lines

    def _oversize(self, *, newline: bool) -> RawLine:
        """The stand-in of the oversize line just skipped."""
        size, self._skipped = self._skipped, -1
        found = _LEADING_ID.match(self._head)
        note = _Oversize(found[1].decode() if found else None, size)
        self._line += 1
        raw = RawLine(self._line, OVERSIZE_PREFIX + _encoder.encode(note), self._offset, size)
        self._offset += size + newline
        return raw

    def _lines(self, parts: list[bytes]) -> list[RawLine]:
        out = []
        offset, line = self._offset, self._line
        for part in parts:
            line += 1
            out.append(RawLine(line, part, offset))
            offset += len(part) + 1
        self._offset, self._line = offset, line
        return out

    @property
    def position(self) -> tuple[int, int]:
        """(byte offset after the last line returned, its line number)."""
        return self._offset, self._line


async def jsonl_source(
    send: ObjectSendStream[list[RawLine]],
    /,
    *,
    path: str | os.PathLike[str],
    start_offset: int = 0,
    start_line: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    stop: anyio.Event | None = None,
    max_line: int | None = None,
) -> int:
    """Send the lines of the JSONL file at ``path``, from byte ``start_offset`` (the
    start of line ``start_line + 1``) on; stops between chunks once ``stop`` is set.
    A line longer than ``max_line`` bytes is skipped, not held (see the module doc).
    Returns the offset it read up to: the file's end, unless a stop came first."""
    reader = LineReader(start_offset=start_offset, start_line=start_line, max_line=max_line)
    end = start_offset
    async with send:
        try:
            async with opened(path) as handle:
                await handle.seek(start_offset)
                while stop is None or not stop.is_set():
                    chunk = await handle.read(chunk_size)
                    end += len(chunk)
                    lines = reader.feed(chunk) if chunk else reader.flush()
                    if lines:
                        await send.send(lines)
                    if not chunk:
                        break
        except OSError as exc:
            raise InputError(f"cannot read input {str(path)!r}: {exc.strerror}") from exc
    return end


class _Unencodable(msgspec.Struct):
    custom_id: str | None
    message: str


_unencodable_decoder = msgspec.json.Decoder(_Unencodable)


def entry_line(line: int, item: Any) -> RawLine:
    """The ``RawLine`` of entry number ``line`` of an iterable: ``item`` encoded (bytes
    are taken as they are), or, when msgspec cannot encode it, a line the validate
    stage rejects with the reason."""
    if isinstance(item, bytes | bytearray | memoryview):
        return RawLine(line, bytes(item), -1)
    try:
        return RawLine(line, _encoder.encode(item), -1)
    except _ENCODE_ERRORS as exc:
        return RawLine(line, _unencodable_data(item, exc), -1)


def _unencodable_data(item: Any, exc: BaseException) -> bytes:
    reason = f"{type(exc).__name__}: {exc}"
    if len(reason) > _MAX_REASON:
        reason = reason[: _MAX_REASON - 3] + "..."
    message = (
        f"the entry cannot be encoded as JSON ({reason}); an entry is a dict or msgspec "
        'Struct {"custom_id": ..., "params": {...}} of JSON values, or its encoded bytes'
    )
    try:  # the custom_id when there is a readable, encodable one
        cid = item.get("custom_id") if isinstance(item, dict) else getattr(item, "custom_id", None)
        note = _encoder.encode(_Unencodable(cid if isinstance(cid, str) else None, message))
    except Exception:
        note = _encoder.encode(_Unencodable(None, message))
    return UNENCODABLE_PREFIX + note


class _Oversize(msgspec.Struct):
    custom_id: str | None
    size: int


_oversize_decoder = msgspec.json.Decoder(_Oversize)


def oversize_reason(data: bytes) -> tuple[str | None, int] | None:
    """(custom_id, length) when ``data`` stands for a line too long to hold (see
    ``LineReader``), else None."""
    if not data.startswith(OVERSIZE_PREFIX):
        return None
    note = _oversize_decoder.decode(data[len(OVERSIZE_PREFIX) :])
    return note.custom_id, note.size


def unencodable_reason(data: bytes) -> tuple[str | None, str] | None:
    """(custom_id, message) when ``data`` stands for an entry that could not be
    encoded (see ``entry_line``), else None."""
    if not data.startswith(UNENCODABLE_PREFIX):
        return None
    try:
        note = _unencodable_decoder.decode(data[len(UNENCODABLE_PREFIX) :])
    except msgspec.DecodeError:
        return None
    return note.custom_id, note.message


async def iterable_source(
    send: ObjectSendStream[list[RawLine]],
    /,
    *,
    items: Iterable[Any] | AsyncIterable[Any],
    skip: int = 0,
    batch: int = 1000,
    stop: anyio.Event | None = None,
    make: Callable[[int, Any], Any] | None = None,
) -> None:
    """Send the entries of a sync or async iterable (dicts, Structs or encoded
    bytes), numbered from 1, with offset -1. The first ``skip`` items (already
    accounted for by an earlier run of the job) are passed over.

    A sync iterable is sent in lists of ``batch`` items. An async iterable is never
    held back while it waits for its next item: whatever it has produced goes out
    at once (in lists of up to ``batch`` while it produces faster than the pipeline
    takes). ``stop`` ends the source between items, and interrupts an async
    iterable that is waiting for its next item (it is closed; what it produced
    before is sent). ``make(line, item)`` makes what is sent of each item (default:
    its ``RawLine``; a source of records for a request builder sends ``Record``s)."""
    make = make or entry_line
    async with send:
        if isinstance(items, AsyncIterable):
            await _async_items(send, items, skip, batch, stop, make)
        else:
            await _sync_items(send, items, skip, batch, stop, make)


async def _sync_items(
    send: ObjectSendStream[list[RawLine]],
    items: Iterable[Any],
    skip: int,
    batch: int,
    stop: anyio.Event | None,
    make: Callable[[int, Any], Any],
) -> None:
    pending: list[RawLine] = []
    line = 0
    for item in items:
        line += 1
        if line <= skip:
            continue
        pending.append(make(line, item))
        if len(pending) >= batch:
            await send.send(pending)
            pending = []
            if stop is not None and stop.is_set():
                return
    if pending:
        await send.send(pending)


async def _async_items(
    send: ObjectSendStream[list[RawLine]],
    items: AsyncIterable[Any],
    skip: int,
    batch: int,
    stop: anyio.Event | None,
    make: Callable[[int, Any], Any],
) -> None:
    """The async iterator runs in a task of its own (``_pump``), handing items over
    a bounded stream without a checkpoint per item; this task sends whatever has
    arrived whenever the iterator waits (or the hand-over is full). The only way
    to interrupt an iterator that waits is to cancel it, hence the inner task
    group: it ends before this function returns, so no task outlives the stage."""
    item_send, item_receive = anyio.create_memory_object_stream[Any](batch)
    # closed again on the way out: a pump cancelled before its first step never did
    with item_send, item_receive:
        async with anyio.create_task_group() as tg:
            pump_scope = anyio.CancelScope()
            tg.start_soon(_pump, item_send, items, skip, pump_scope)
            if stop is not None:
                tg.start_soon(_cancel_on, stop, pump_scope)
            await _collect(send, item_receive, skip, batch, make)
            tg.cancel_scope.cancel()  # the stop watcher


async def _pump(
    send: MemoryObjectSendStream[Any],
    items: AsyncIterable[Any],
    skip: int,
    scope: anyio.CancelScope,
) -> None:
    async with send:
        with scope:
            seen = 0
            iterator = aiter(items)
            try:
                async for item in iterator:
                    seen += 1
                    if seen <= skip:
                        continue
                    try:
                        send.send_nowait(item)
                    except anyio.WouldBlock:
                        await send.send(item)
            finally:
                close = getattr(iterator, "aclose", None)
                if close is not None:
                    with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_SECONDS):
                        await close()


async def _cancel_on(stop: anyio.Event, scope: anyio.CancelScope) -> None:
    await stop.wait()
    scope.cancel()


async def _collect(
    send: ObjectSendStream[list[RawLine]],
    receive: MemoryObjectReceiveStream[Any],
    line: int,
    batch: int,
    make: Callable[[int, Any], Any],
) -> None:
    async with receive:
        while True:
            try:
                items = [await receive.receive()]
            except anyio.EndOfStream:
                return
            while len(items) < batch:
                try:
                    items.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            chunk = [make(line + i, item) for i, item in enumerate(items, 1)]
            line += len(items)
            await send.send(chunk)
