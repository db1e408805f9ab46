"""User stages on the request side, and how the framework keeps them crash-safe.

A user stage sits between the source and the chunker: on records (before the
request builder), as the request builder itself (records in, request lines out),
or on validated requests (``Entry``). It comes in two forms:

* a plain function ``def f(item) -> item | list | None`` (sync or ``async``): the
  framework calls it once per item, so it knows exactly what each input became:
  ``None`` drops the item (counted as *filtered*), a list fans it out;
* a general stage ``async def stage(receive, send, /)``: it receives and sends one
  item at a time and may hold, reorder, drop or fan out as it likes. It sees the
  framework's items, each carrying the number of the record it came from
  (``Record.line``, ``Entry.line``), and every item it sends must carry the line of
  the record it came from: send what it received (``record.replace(value)``,
  ``msgspec.structs.replace(entry, raw=...)``), or build requests with
  ``record.request(entry)``.

What the framework does around either form (``UserStage``), so that a stage
needs no checkpoint markers of its own:

* ``HeldLines`` counts, per source line, the items of that line alive on the
  request side, from the first user stage's input to the chunker (which resolves
  them as it packs them into a batch). The chunker's checkpoint never passes the
  lowest line still counted, so a record held, reordered or in transit is read
  again after a crash; what the ledger already holds from that line is skipped
  there, never sent twice.
* A general stage's fan-out is counted as it comes out: it must send the items of
  one record together (an item sent after its siblings were packed and claimed
  past could be lost to a crash).
* A general stage's drops are known only when it ends: until then its lowest
  dropped line holds the checkpoint back (a restart reads from there again, and
  skips what is done). Drop with a plain function where you can.
* Requests a user stage emitted are validated again (``model``, ``max_tokens``
  and ``cost_usd`` derive from the bytes sent, never go stale) and marked to be
  carried: the ledger stores their bytes, so a retry sends what the stage made,
  without running it again.
"""

from __future__ import annotations

import heapq
import inspect
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import anyio.lowlevel
import msgspec
from anyio.abc import ObjectReceiveStream, ObjectSendStream

from ._items import Entry, Flush, RawLine, Reject
from .source import entry_line

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._protocol import JobCounters
    from .validate import Validator

__all__ = ("HeldLines", "Record", "UserStage")

T = TypeVar("T")

#: Items a general stage's sends gather before they go downstream as one list (they
#: also go whenever the stage waits for input, so nothing lingers behind it).
_SEND_BATCH = 256

_encoder = msgspec.json.Encoder()


class Record(msgspec.Struct, frozen=True, gc=False):
    """One record of a source of records, as a general stage sees it: ``line`` is
    its number in the source (1-based), ``value`` what the source yielded."""

    line: int
    value: Any

    def replace(self, value: Any) -> Record:
        """This record with another value (same line)."""
        return Record(self.line, value)

    def request(self, entry: Any) -> RawLine:
        """A batch entry (``{"custom_id": ..., "params": ...}`` as a dict, a Struct
        or its encoded bytes) built from this record: what a general request
        builder sends."""
        return entry_line(self.line, entry)


class HeldLines:
    """Items alive on the request side, counted per source line (see the module
    docstring). ``cap()`` is where a checkpoint may go: before the lowest line
    still counted."""

    __slots__ = ("_count", "_heap", "_offset", "fanned", "filtered")

    def __init__(self) -> None:
        self._count: dict[int, int] = {}
        self._offset: dict[int, int] = {}
        self._heap: list[int] = []
        #: items user stages dropped in this run
        self.filtered = 0
        #: items user stages made beyond one per item they took (a fan-out)
        self.fanned = 0

    def __len__(self) -> int:
        return len(self._count)

    def add(self, line: int, offset: int = -1, n: int = 1) -> None:
        """``n`` more items of ``line`` (whose source bytes start at ``offset``)."""
        count = self._count.get(line)
        if count is None:
            self._count[line] = n
            self._offset[line] = offset
            heapq.heappush(self._heap, line)
        else:
            self._count[line] = count + n

    def resolve(self, line: int, n: int = 1) -> None:
        """``n`` items of ``line`` are accounted for (packed, rejected or dropped)."""
        count = self._count.get(line)
        if count is None:
            return  # a retry, or a line no user stage saw
        if count > n:
            self._count[line] = count - n
        else:
            del self._count[line], self._offset[line]

    def drop(self, line: int, n: int = 1) -> None:
        """``n`` items of ``line`` were dropped by a user stage: filtered."""
        self.filtered += n
        self.resolve(line, n)

    def cap(self) -> tuple[int | None, int | None]:
        """(byte offset, line) a checkpoint may not pass, or (None, None)."""
        heap, count = self._heap, self._count
        while heap and heap[0] not in count:
            heapq.heappop(heap)
        if not heap:
            return None, None
        first = heap[0]
        offset = self._offset[first]
        return (offset if offset >= 0 else None), first - 1


class _Input(ObjectReceiveStream[T]):
    """The receive end a user stage gets: one item per ``receive``; markers and
    rejects go around the stage, straight downstream (the source's final ``Flush``
    waits until the stage is done)."""

    def __init__(self, edge: UserStage) -> None:
        self._edge = edge
        self._items: list[Any] = []

    async def receive(self) -> T:
        while not self._items:
            await self._edge.fill(self._items)
        return self._items.pop()  # type: ignore[no-any-return]

    async def aclose(self) -> None:
        await self._edge.upstream.aclose()


class _Output(ObjectSendStream[T]):
    """The send end a user stage gets: items gathered and sent downstream in lists."""

    def __init__(self, edge: UserStage) -> None:
        self._edge = edge

    async def send(self, item: T) -> None:
        edge = self._edge
        if edge.closed:
            raise anyio.ClosedResourceError
        edge.emit_general(item)
        if len(edge.pending) >= _SEND_BATCH:
            await edge.flush()

    async def aclose(self) -> None:
        """The stage is done sending; the runner sends the rest on once the stage
        returned (not when it fails)."""
        self._edge.closed = True
        await anyio.lowlevel.checkpoint()


class UserStage:
    """Runs one user stage between two of the runner's streams (which carry lists),
    keeping ``held`` right whatever the stage does. ``kind`` is what it takes:
    ``"record"``, ``"builder"`` (records in, request lines out) or ``"request"``.

    ``register``: this is the first user stage on the request side, whose input is
    where the counting starts. ``validator``: re-checks the requests a stage on
    requests emitted (None for the others)."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        kind: str,
        general: bool,
        upstream: ObjectReceiveStream[list[Any]],
        downstream: ObjectSendStream[list[Any]],
        held: HeldLines,
        register: bool,
        validator: Validator | None = None,
        counters: JobCounters | None = None,
    ) -> None:
        self.fn = fn
        self.counters = counters
        self.kind = kind
        self.general = general
        self.upstream = upstream
        self.downstream = downstream
        self.held = held
        self.register = register
        self.validator = validator
        self.pending: list[Any] = []
        #: lines received by a general stage and not yet seen to come out: count
        self._inside: dict[int, int] = {}
        self._final: list[Any] = []
        #: the stage closed its send end
        self.closed = False

    # -- the run -------------------------------------------------------------------

    async def run(self) -> None:
        """Run the stage to its end (the runner calls this as the stage's task)."""
        receive: _Input[Any] = _Input(self)
        send: _Output[Any] = _Output(self)
        async with receive:
            if self.general:
                await self.fn(receive, send)
            else:
                await self._apply()
        # failed or cancelled: this is not reached, so what the stage held stays
        # counted (no checkpoint passes it), the source's end is not passed on, and
        # the runner closes the streams
        await self.finish()

    async def _apply(self) -> None:
        """The plain form: the function once per item, a list from upstream at a
        time (no stream call per item)."""
        fn, emit = self.fn, self._emit_plain
        #: an ``async def``, or a callable seen to return an awaitable
        is_async: bool | None = True if inspect.iscoroutinefunction(fn) else None
        unwrap = self.kind != "request"  # records: the function gets the value
        items: list[Any] = []
        while True:
            try:
                await self.fill(items)
            except anyio.EndOfStream:
                return
            while items:
                item = items.pop()
                out = fn(item.value if unwrap else item)
                if is_async is None:
                    is_async = inspect.isawaitable(out)
                if is_async:
                    out = await out
                emit(item, out)
            if len(self.pending) >= _SEND_BATCH:
                await self.flush()

    # -- input ---------------------------------------------------------------------

    async def fill(self, items: list[Any]) -> None:
        """The next list from upstream into ``items`` (reversed, for ``pop``): the
        stage's own items; the rest goes around it. Sends what the stage emitted
        first: it is about to wait for input."""
        await self.flush()
        batch = await self.upstream.receive()
        around: list[Any] = []
        mine: list[Any] = []
        for item in batch:
            kind = type(item)
            if kind is Entry or kind is Record or kind is RawLine:
                mine.append(item)
            elif kind is Flush and item.final:
                self._final.append(item)
            else:
                around.append(item)  # rejects and markers: straight on
        if self.register:
            add = self.held.add
            for item in mine:
                add(item.line, -1 if type(item) is Record else item.offset)
            if mine and self.counters is not None:
                self.counters.read = max(self.counters.read, max(i.line for i in mine))
        if self.general:
            inside = self._inside
            for item in mine:
                inside[item.line] = inside.get(item.line, 0) + 1
        if around:
            await self.downstream.send(around)
        mine.reverse()
        items.extend(mine)

    # -- output --------------------------------------------------------------------

    def _emit_plain(self, item: Any, out: Any) -> None:
        """What a plain function returned for ``item``: None drops it, a list fans
        it out; each output is the item's own line."""
        if out is None:
            self.held.drop(item.line)
            return
        outs = out if isinstance(out, list) else [out]
        if not outs:
            self.held.drop(item.line)
            return
        if len(outs) > 1:
            self.held.add(item.line, n=len(outs) - 1)
            self.held.fanned += len(outs) - 1
        for value in outs:
            self.pending.append(self._as_item(item, value))

    def _as_item(self, source: Any, value: Any) -> Any:
        line = source.line
        if self.kind == "record":
            return Record(line, value)
        if self.kind == "builder":
            return entry_line(line, value)
        if type(value) is Entry:
            return value if value.line == line else msgspec.structs.replace(value, line=line)
        raw = entry_line(line, value).data
        return Entry(line, "", raw, source.offset, source.end)

    def emit_general(self, item: Any) -> None:
        """One item a general stage sent: it carries its line."""
        wanted = {"record": Record, "builder": RawLine, "request": Entry}[self.kind]
        if type(item) is not wanted:
            how = {
                "record": "the Records it received, or record.replace(value)",
                "builder": "record.request(entry) for each request it builds",
                "request": "Entry items (msgspec.structs.replace(entry, raw=...) to rewrite one)",
            }[self.kind]
            raise TypeError(f"a stage on {self.kind}s sent a {type(item).__name__}: send {how}")
        line = item.line
        left = self._inside.get(line, 0)
        if left > 1:
            self._inside[line] = left - 1
        elif left == 1:
            del self._inside[line]
        else:  # one more item of a line that came out already: a fan-out
            self.held.add(line, item.offset if type(item) is not Record else -1)
            self.held.fanned += 1
        self.pending.append(item)

    async def flush(self) -> None:
        """Send what the stage emitted, as one list (requests checked again)."""
        if not self.pending:
            return
        items, self.pending = self.pending, []
        if self.validator is not None:
            items = self._recheck(items)
        await self.downstream.send(items)

    def _recheck(self, entries: list[Entry]) -> list[Entry | Reject]:
        """Entries as the chunker needs them: every field derived from ``raw`` again,
        and carried (``offset`` -1: the ledger keeps the bytes, a retry sends them)."""
        assert self.validator is not None
        checked = self.validator.check([RawLine(e.line, e.raw, -1) for e in entries])
        out: list[Entry | Reject] = []
        for entry, item in zip(entries, checked, strict=False):
            if type(item) is Entry:
                item.end = entry.end
                item.attempt = entry.attempt
            elif type(item) is Reject:
                item.end = entry.end
            out.append(item)  # type: ignore[arg-type]
        if len(checked) < len(entries):  # blank requests: nothing to send
            for entry in entries[len(checked) :]:
                self.held.drop(entry.line)
        return out

    async def finish(self) -> None:
        """The stage returned: what it still held was dropped; then the source's
        final ``Flush`` goes on, and the downstream end closes."""
        try:
            await self.flush()
            for line, n in self._inside.items():
                self.held.drop(line, n)
            self._inside.clear()
            if self._final:
                await self.downstream.send(self._final)
        finally:
            await self.downstream.aclose()


def is_general(fn: Callable[..., Any]) -> bool:
    """Whether ``fn`` is a general stage (two positional parameters: receive, send)
    rather than a plain function of one item."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [
        p
        for p in params
        if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and p.default is p.empty
    ]
    return len(positional) == 2
