"""Result processors: each result joined with its request (and record), turned into
the user's own output records on their way into the sink.

``ProcessingSink`` wraps the job's sink. The results stage writes result lines to
it as to any sink; for each block it asks the ledger for the requests of those
results (``Ledger.requests``: their bytes, or where they are in the input file),
joins them, calls the processor and writes what it returns to the inner sink.
Since this all happens inside the sink's ``write``, the outputs of a result are
committed in the same ledger step as the result (``commit_results`` with the
sink's position): after a crash, a JSONL output is cut back to the last commit and
the results after it are processed again, so each output is in the file once.

Memory stays flat: one block of results (at most a few thousand) and its requests
at a time; the record is given back only by a source that can (a sequence: a
list, a tuple), by its number.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from contextlib import AsyncExitStack
from typing import TYPE_CHECKING, Any

import msgspec

from ..api._types import ResultLine
from ._files import opened
from .retry import read_back

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

    from ..ledger._base import Ledger, SinkPosition
    from .sink import ResultSink

__all__ = ("JoinedResult", "ProcessingSink", "Routed")

_result_decoder = msgspec.json.Decoder(ResultLine)
_any_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()


class JoinedResult(msgspec.Struct, frozen=True):
    """One result with what it answers, as a result processor gets it.

    ``result``: the result line (``custom_id`` and ``result``: succeeded with its
    ``message``, errored, canceled or expired). ``request``: the batch entry that
    was sent, decoded (``{"custom_id": ..., "params": {...}}``), the builder's own
    output when a builder made it. ``line``: the request's record number in the
    source. ``record``: the source's record, when the source can give it back (a
    list or other sequence), else None."""

    custom_id: str
    result: ResultLine
    request: Any
    line: int
    record: Any = None

    @property
    def text(self) -> str | None:
        """The text of a succeeded result's message (its text blocks joined), else None."""
        message = getattr(self.result.result, "message", None)
        if message is None:
            return None
        return "".join(
            block.get("text", "") for block in message.content if block.get("type") == "text"
        )


class Routed(msgspec.Struct, frozen=True):
    """An output a result processor sends to one of its routes (a second sink,
    named in ``process_results(routes=...)``) instead of the job's output."""

    route: str
    value: Any


class ProcessingSink:
    """A ``ResultSink`` that turns result lines into the processor's outputs before
    they reach ``inner`` (see the module docstring)."""

    def __init__(
        self,
        inner: ResultSink,
        process: Callable[[JoinedResult], Any],
        *,
        ledger: Ledger,
        input_path: str | os.PathLike[str] | None = None,
        records: Any = None,
        routes: dict[str, ResultSink] | None = None,
        route_positions: dict[str, SinkPosition] | None = None,
    ) -> None:
        self.inner = inner
        #: further sinks by name, each committed with the output in one ledger step
        self.routes = routes or {}
        self._route_start = route_positions or {}
        #: their durable positions after the last ``commit`` (what the ledger records)
        self.route_positions: dict[str, SinkPosition] = {}
        self.process = process
        self.ledger = ledger
        self.input_path = input_path
        self.records = records if isinstance(records, Sequence) else None
        self._files = AsyncExitStack()
        self._handle: Any = None
        self._async = inspect.iscoroutinefunction(process)
        #: results processed in this run; outputs written
        self.processed = 0
        self.outputs = 0

    def __repr__(self) -> str:
        return f"ProcessingSink({self.inner!r}, {self.process!r})"

    @property
    def position(self) -> SinkPosition:
        return self.inner.position

    async def open(self, position: SinkPosition) -> None:
        await self.inner.open(position)
        for name, sink in self.routes.items():
            start = self._route_start.get(name)
            await sink.open(start if start is not None else type(position)())
            self.route_positions[name] = sink.position
        if self.input_path is not None:
            self._handle = await self._files.enter_async_context(opened(self.input_path))

    async def write(self, lines: list[bytes]) -> None:
        results = [_result_decoder.decode(line) for line in lines]
        stored = await self.ledger.requests([r.custom_id for r in results])
        requests = {item.custom_id: item for item in stored}
        entries = {e.custom_id: e for e in await read_back(stored, self._handle, self.input_path)}
        out: list[bytes] = []
        routed: dict[str, list[bytes]] = {}
        for result in results:
            item = requests.get(result.custom_id)
            entry = entries.get(result.custom_id)
            line = item.line if item is not None else 0
            record = None
            if self.records is not None and 0 < line <= len(self.records):
                record = self.records[line - 1]
            joined = JoinedResult(
                result.custom_id,
                result,
                _any_decoder.decode(entry.raw) if entry is not None else None,
                line,
                record,
            )
            value = self.process(joined)
            if self._async or inspect.isawaitable(value):
                value = await value
            self._sort(value, out, routed)
        self.processed += len(results)
        self.outputs += len(out)
        if out:
            await self.inner.write(out)
        for name, lines in routed.items():
            await self.routes[name].write(lines)

    def _sort(self, value: Any, out: list[bytes], routed: dict[str, list[bytes]]) -> None:
        """The processor's outputs for one result, to the output or their route."""
        if value is None:
            return
        for v in value if isinstance(value, list) else [value]:
            if type(v) is Routed:
                if v.route not in self.routes:
                    raise KeyError(
                        f"the processor routed an output to {v.route!r}, which is not one "
                        f"of its routes ({', '.join(self.routes) or 'none'})"
                    )
                routed.setdefault(v.route, []).append(_encode_one(v.value))
            else:
                out.append(_encode_one(v))

    async def commit(self) -> SinkPosition:
        """Make the routes and the output durable; the output's position (the
        routes' are in ``route_positions``, committed with it by the results stage)."""
        for name, sink in self.routes.items():
            self.route_positions[name] = await sink.commit()
        return await self.inner.commit()

    async def aclose(self) -> None:
        await self._files.aclose()
        for sink in self.routes.values():
            await sink.aclose()
        await self.inner.aclose()


def _encode_one(value: Any) -> bytes:
    return value if isinstance(value, bytes) else _encoder.encode(value)
