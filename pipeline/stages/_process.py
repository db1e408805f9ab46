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

__all__ = ("JoinedResult", "ProcessingSink")

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
    ) -> None:
        self.inner = inner
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
        if self.input_path is not None:
            self._handle = await self._files.enter_async_context(opened(self.input_path))

    async def write(self, lines: list[bytes]) -> None:
        results = [_result_decoder.decode(line) for line in lines]
        stored = await self.ledger.requests([r.custom_id for r in results])
        requests = {item.custom_id: item for item in stored}
        entries = {e.custom_id: e for e in await read_back(stored, self._handle)}
        out: list[bytes] = []
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
            out += _encoded(value)
        self.processed += len(results)
        self.outputs += len(out)
        if out:
            await self.inner.write(out)

    async def commit(self) -> SinkPosition:
        return await self.inner.commit()

    async def aclose(self) -> None:
        await self._files.aclose()
        await self.inner.aclose()


def _encoded(value: Any) -> list[bytes]:
    if value is None:
        return []
    values = value if isinstance(value, list) else [value]
    return [v if isinstance(v, bytes) else _encoder.encode(v) for v in values]
