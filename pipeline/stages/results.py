"""Results: streams each ended batch's results, routes every line by its outcome,
writes final ones to the sink and spools retryable ones, committing both to the
ledger with the sink's durable position.

Each line is decoded once into a small view (custom_id and the outcome fields the
routing needs); the line's own bytes go to the sink, never re-encoded. Lines come in
blocks of network chunks gathered (``Client.results_blocks``), each decoded in one
call; a block whose lines are all written now goes to a ``JsonlSink`` as it came, so
the common block makes no ``bytes`` object per line. Results come in any order and
are matched by custom_id only.

Routing: ``succeeded`` and final errors (``invalid_request_error`` and any other
non-retryable type) go to the output; ``api_error``, ``overloaded_error`` and
``expired`` are re-sent while attempts are left (``max_attempts``), then go to the
output as they are; ``canceled`` follows ``config.canceled``, except while the job
is being canceled (``canceling`` is set): then a canceled request is held in the
ledger as canceled, neither written nor re-sent (``resume_canceled`` sends it).

A broken download is re-opened and what this batch already delivered is skipped
(a set of custom_ids bounded by the batch's size). A batch partly written before a
restart asks the ledger which of its lines are still owed (``unwritten``).

This stage ends the pipeline's main line: its output is the sink, not a stream.
"""

from __future__ import annotations

import logging
from operator import attrgetter
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from .._errors import TRANSIENT_ERRORS, APIError, ResultStreamError
from .._pricing import DEFAULT_PRICES, PriceTable
from ..api._lines import cut_lines, split_block
from .sink import JsonlSink

if TYPE_CHECKING:
    from anyio.abc import ObjectReceiveStream

    from .._config import PipelineConfig
    from ..api._client import Client
    from ..api._types import MessageBatch
    from ..ledger._base import Ledger
    from ._items import EndedBatch
    from ._protocol import Capacity, JobCounters
    from .sink import ResultSink

__all__ = ("RETRYABLE_ERRORS", "ResultsCollector", "results")

logger = logging.getLogger("pipeline.results")

#: Error types worth re-sending: the service failed, not the request.
RETRYABLE_ERRORS = frozenset({"api_error", "overloaded_error"})
#: Re-opens in a row of a broken download that bring no new line (or starts of a
#: download that failed after the client's own tries: a burst of 5xx, 429 or resets)
#: before the job fails (a download that makes progress is re-opened as often as it
#: breaks).
MAX_REOPENS = 5
#: Lines written between two ledger commits (each commit fsyncs the sink).
COMMIT_LINES = 4096


# -- the view: just what routing needs ------------------------------------------------
# Scalars and one another only (no cycle is possible): not tracked by the cyclic GC.


class _CacheCreation(msgspec.Struct, gc=False):
    ephemeral_1h_input_tokens: int = 0


class _Usage(msgspec.Struct, gc=False):
    input_tokens: int = 0
    output_tokens: int = 0
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    cache_creation: _CacheCreation | None = None


class _Message(msgspec.Struct, gc=False):
    model: str = ""
    usage: _Usage = msgspec.field(default_factory=_Usage)


class _ErrorDetail(msgspec.Struct, gc=False):
    type: str = "unknown"


class _ErrorEnvelope(msgspec.Struct, gc=False):
    error: _ErrorDetail = msgspec.field(default_factory=_ErrorDetail)


class _Succeeded(msgspec.Struct, tag="succeeded", tag_field="type", gc=False):
    message: _Message


class _Errored(msgspec.Struct, tag="errored", tag_field="type", gc=False):
    error: _ErrorEnvelope


class _Canceled(msgspec.Struct, tag="canceled", tag_field="type", gc=False):
    pass


class _Expired(msgspec.Struct, tag="expired", tag_field="type", gc=False):
    pass


class _View(msgspec.Struct, gc=False):
    custom_id: str
    result: _Succeeded | _Errored | _Canceled | _Expired


_decoder = msgspec.json.Decoder(_View)
_block_decoder = msgspec.json.Decoder(list[_View])
#: Bytes of a block decoded in one call: the copies a larger piece takes (> 128 KiB)
#: come from mmap and fault in fresh pages at every call (measured: 2x the decode).
_DECODE_BYTES = 1 << 16
_custom_id = attrgetter("custom_id")


class ResultsCollector:
    """Downloads and routes the results of one batch after another."""

    def __init__(
        self,
        *,
        client: Client,
        ledger: Ledger,
        sink: ResultSink,
        config: PipelineConfig,
        capacity: Capacity,
        progress: JobCounters,
        resumed: dict[int, int] | None = None,
        prices: PriceTable = DEFAULT_PRICES,
        canceling: anyio.Event | None = None,
    ) -> None:
        self.client = client
        #: set while the job is being canceled: canceled results are held, not written
        self.canceling = canceling
        #: prices the actual cost of succeeded results
        self.prices = prices
        self.ledger = ledger
        self.sink = sink
        self.config = config
        self.capacity = capacity
        self.progress = progress
        #: local id -> requests the runner counted outstanding, for the batches that
        #: may have been partly written before a restart
        self.resumed = resumed or {}
        self._started: set[int] = set()

    async def collect(self, ended: EndedBatch) -> None:
        """Download, route and commit one batch; then release its capacity."""
        if ended.adopted:  # it may hold requests of another job: write only ours
            self.resumed.setdefault(ended.local_id, ended.request_count)
        state = _BatchState(ended)
        batch: MessageBatch | None = None
        fruitless = 0  # re-opens in a row that delivered no new line
        while True:
            before = len(state.handled)
            try:
                if batch is None:
                    batch = await self.client.retrieve_batch(ended.batch_id)
                await self._download(state, batch)
                break
            except (ResultStreamError, *TRANSIENT_ERRORS) as exc:
                # a download cut short, or one that did not start after the client's
                # own tries (a burst of 5xx, 429 or resets): the batch's results are
                # still there, so it starts again rather than failing the job
                fruitless = 0 if len(state.handled) > before else fruitless + 1
                if fruitless > MAX_REOPENS:
                    raise
                if isinstance(exc, ResultStreamError):
                    logger.warning("results download broke, re-opening: %s", exc)
                else:
                    logger.warning("results download did not start, trying again: %s", exc)
        await self._commit(state, done=True)
        self._started.discard(ended.local_id)
        self.resumed.pop(ended.local_id, None)
        self.capacity.release(ended.request_count)
        self.progress.in_flight -= ended.request_count
        self.progress.batches_in_flight -= 1
        self.progress.changed()
        logger.info(
            "batch collected",
            extra={"batch_id": ended.batch_id, "written": state.total_written},
        )
        if self.config.delete_ended:
            try:
                await self.client.delete_batch(ended.batch_id)
            except APIError as exc:
                logger.warning("could not delete batch %s: %s", ended.batch_id, exc)

    async def _download(self, state: _BatchState, batch: MessageBatch) -> None:
        """One pass over the results; the download is closed however it ends."""
        blocks = self.client.results_blocks(batch)
        try:
            async for block in blocks:
                await self._route(state, block)
        finally:
            close = getattr(blocks, "aclose", None)
            if close is not None:
                with anyio.CancelScope(shield=True):
                    await close()

    async def _route(self, state: _BatchState, block: bytes) -> None:
        """Route one block of lines (the module docstring's rules).

        One pass tallies the fresh ``succeeded`` lines. A block whose lines are all
        written now goes to the sink as it came; one with lines held back (a
        duplicate, a retry: the rare case) has them cut out (``_route_some``)."""
        views, lines = _decode_block(block, state.batch.batch_id)
        if state.batch.local_id in self.resumed:
            owed = split_block(block) if lines is None else lines
            lines, views = await self._owed(state, owed, views)
        tally = _Tally()
        skip, others = tally.sort(views, state.handled)
        retry: list[int] = []
        for i in others:
            if self._retryable(views[i]):
                retry.append(i)
            else:
                tally.other(views[i].result)
        if skip or retry:
            await self._route_some(state, block, lines, views, tally, sorted(skip + retry), retry)
        else:
            state.written_ids += map(_custom_id, views)
            tally.add_to(self.progress, self.prices)
            if views:
                await self._write(state, block if lines is None else lines, len(views))
        if len(state.written_ids) + len(state.spool) + len(state.canceled) >= COMMIT_LINES:
            await self._commit(state, done=False)

    async def _route_some(
        self,
        state: _BatchState,
        block: bytes,
        lines: list[bytes] | None,
        views: list[_View],
        tally: _Tally,
        held: list[int],
        retry: list[int],
    ) -> None:
        """Write the lines of a block but those ``held`` (sorted): the duplicates,
        skipped, and the ``retry`` ones, re-sent while attempts are left, else written
        after the others. ``lines``: the block's own list, if it has one (it is cut)."""
        skipped = set(held)
        written = [v.custom_id for i, v in enumerate(views) if i not in skipped]
        if lines is None:  # the block is its lines joined: cut the held ones out
            kept, cut = cut_lines(block, held)
            final: list[bytes] = [kept] if kept else []
            retrying = set(retry)
            retried = [(line, views[i]) for i, line in zip(held, cut, strict=True) if i in retrying]
        else:
            retried = [(lines[i], views[i]) for i in retry]
            final = [line for i, line in enumerate(lines) if i not in skipped]
        if retried and self._holding():  # the job's cancel: canceled ones are held
            held_now = [(ln, v) for ln, v in retried if isinstance(v.result, _Canceled)]
            retried = [(ln, v) for ln, v in retried if not isinstance(v.result, _Canceled)]
            for _, view in held_now:
                state.canceled.append(view.custom_id)
                tally.other(view.result)
        if retried:
            attempts = await self.ledger.attempts([v.custom_id for _, v in retried])
            for line, view in retried:
                if attempts.get(view.custom_id, 1) < self.config.max_attempts:
                    state.spool.append(view.custom_id)
                else:
                    final.append(line)
                    written.append(view.custom_id)
                    tally.other(view.result)
        state.written_ids += written
        tally.add_to(self.progress, self.prices)
        if written:
            lines_or_block = b"\n".join(final) if lines is None else final
            await self._write(state, lines_or_block, len(written))

    async def _owed(
        self, state: _BatchState, lines: list[bytes], views: list[_View]
    ) -> tuple[list[bytes], list[_View]]:
        """Only the lines a batch partly written before a restart still owes."""
        fresh = [i for i, v in enumerate(views) if v.custom_id not in state.handled]
        if not fresh:
            return [], []
        owed = set(
            await self.ledger.unwritten(state.batch.local_id, [views[i].custom_id for i in fresh])
        )
        keep = [i for i in fresh if views[i].custom_id in owed]
        return [lines[i] for i in keep], [views[i] for i in keep]

    def _retryable(self, view: _View) -> bool:
        result = view.result
        if isinstance(result, _Errored):
            return result.error.error.type in RETRYABLE_ERRORS
        if isinstance(result, _Expired):
            return True
        if isinstance(result, _Canceled):
            return self._holding() or self.config.canceled == "retry"
        return False

    def _holding(self) -> bool:
        """Whether the job is being canceled (canceled results are held)."""
        return self.canceling is not None and self.canceling.is_set()

    async def _write(self, state: _BatchState, lines: bytes | list[bytes], count: int) -> None:
        """Write ``count`` lines, given as a list or as a block (``split_block``)."""
        local_id = state.batch.local_id
        if local_id not in self._started and local_id not in self.resumed:
            await self.ledger.record_output_start(local_id, self.sink.position.offset)
            self._started.add(local_id)
        if isinstance(lines, bytes):
            if type(self.sink) is JsonlSink:  # a subclass may override ``write``
                await self.sink.write_block(lines, count)
                return
            lines = split_block(lines)
        await self.sink.write(lines)

    async def _commit(self, state: _BatchState, *, done: bool) -> None:
        position = await self.sink.commit()
        written, spool = len(state.written_ids), len(state.spool)
        held = len(state.canceled)
        # ``canceled`` only when there are some: a ledger written before cancel existed
        # (without the keyword) works on for every job that is not canceled
        extra: dict[str, Any] = {"canceled": state.canceled} if held else {}
        # a result processor's routes: their positions go in the same ledger step
        routes = getattr(self.sink, "route_positions", None)
        if routes:
            extra["sinks"] = routes
        missing = await self.ledger.commit_results(
            state.batch.local_id,
            output=position,
            written=written,
            spool=state.spool,
            done=done,
            written_ids=state.written_ids,
            # the batch is deleted right after: its collection must not be lost
            durable=done and self.config.delete_ended,
            **extra,
        )
        if missing:
            logger.error(
                "batch %s returned no result for %d of its requests; they are sent again",
                state.batch.batch_id,
                missing,
            )
            spool += missing
        state.total_written += written
        state.written_ids, state.spool, state.canceled = [], [], []
        progress = self.progress
        progress.written += written
        progress.outstanding -= written + spool + held
        progress.spooled += spool
        progress.retried += spool
        state.resolved += written + spool + held
        if done:
            self._settle(state)
        progress.changed()

    def _settle(self, state: _BatchState) -> None:
        """Stop counting what this batch owed and did not resolve in this run: lines
        written or spooled before a restart. (Requests the service sent no result
        for were spooled by the final commit; anything else left is logged.)"""
        batch = state.batch
        expected = self.resumed.get(batch.local_id, batch.request_count)
        left = expected - state.resolved
        if left > 0 and batch.local_id not in self.resumed:
            logger.error(
                "batch %s returned %d results for %d requests",
                batch.batch_id,
                len(state.handled),
                batch.request_count,
            )
        self.progress.outstanding -= max(0, left)


class _Tally:
    """One block's outcomes and token usage, added to the progress at once: usage is
    summed per model and priced once per block, not once per line (cost is linear
    in tokens)."""

    __slots__ = ("outcomes", "tokens")

    def __init__(self) -> None:
        self.outcomes: dict[str, int] = {}
        #: model -> [input, output, cache creation input, cache read input]
        self.tokens: dict[str, list[int]] = {}

    def sort(self, views: list[_View], handled: set[str]) -> tuple[list[int], list[int]]:
        """Tally each fresh ``succeeded`` view and mark every fresh custom_id handled;
        the indexes of the duplicates (custom_id handled before) and of the fresh
        other outcomes, for the caller to route. The tally is inlined: this loop runs
        once per result line."""
        dropped: list[int] = []
        others: list[int] = []
        tokens = self.tokens
        model: str | None = None
        sums: list[int] = []
        for i, view in enumerate(views):
            cid = view.custom_id
            if cid in handled:
                dropped.append(i)
                continue
            handled.add(cid)
            result = view.result
            if type(result) is not _Succeeded:
                others.append(i)
                continue
            message = result.message
            if message.model != model:
                model = message.model
                sums = tokens.get(model) or tokens.setdefault(model, [0, 0, 0, 0, 0])
            usage = message.usage
            sums[0] += usage.input_tokens
            sums[1] += usage.output_tokens
            if usage.cache_creation_input_tokens:
                sums[2] += usage.cache_creation_input_tokens
                if usage.cache_creation is not None:  # else all at the 5-minute TTL
                    sums[4] += usage.cache_creation.ephemeral_1h_input_tokens
            if usage.cache_read_input_tokens:
                sums[3] += usage.cache_read_input_tokens
        succeeded = len(views) - len(dropped) - len(others)
        if succeeded:
            self.outcomes["succeeded"] = self.outcomes.get("succeeded", 0) + succeeded
        return dropped, others

    def other(self, result: _Succeeded | _Errored | _Canceled | _Expired) -> None:
        """Count an outcome other than ``succeeded`` (those are tallied by ``sort``)."""
        assert not isinstance(result, _Succeeded), "succeeded results are tallied by sort"
        if isinstance(result, _Errored):
            key = "errored:" + result.error.error.type
        elif isinstance(result, _Canceled):
            key = "canceled"
        else:
            key = "expired"
        self.outcomes[key] = self.outcomes.get(key, 0) + 1

    def add_to(self, progress: JobCounters, prices: PriceTable = DEFAULT_PRICES) -> None:
        for key, n in self.outcomes.items():
            progress.outcome(key, n)
        for model, (inputs, outputs, cache_write, cache_read, write_1h) in self.tokens.items():
            if model not in prices:
                progress.unpriced.add(model)
            cost = prices.cost_usd(
                model,
                inputs,
                outputs,
                cache_creation_input_tokens=cache_write,
                cache_read_input_tokens=cache_read,
                cache_creation_1h_input_tokens=write_1h,
            )
            totals = progress.usage.setdefault(model, [0, 0, 0.0, 0, 0])
            totals[0] += inputs
            totals[1] += outputs
            totals[2] += cost
            totals[3] += cache_write
            totals[4] += cache_read
            progress.actual_cost_usd += cost


class _BatchState:
    __slots__ = (
        "batch",
        "canceled",
        "handled",
        "resolved",
        "spool",
        "total_written",
        "written_ids",
    )

    def __init__(self, batch: EndedBatch) -> None:
        self.batch = batch
        self.handled: set[str] = set()
        self.written_ids: list[str] = []
        self.spool: list[str] = []
        #: held as canceled by the job's cancel
        self.canceled: list[str] = []
        self.total_written = 0
        self.resolved = 0


def _decode_block(block: bytes, batch_id: str) -> tuple[list[_View], list[bytes] | None]:
    """The views of a block's lines (``split_block``), and the lines themselves unless
    the block is exactly its lines joined by ``\\n`` (it is but for CRLF endings and
    blank lines).

    Each piece of the block is decoded in one call, as a JSON array with its newlines
    made commas. The lines are decoded one by one instead when that fails (a blank or
    malformed line) or gives other than one view per line (two values on a line, one
    across lines), so a malformed line is reported as on its own, in the same words."""
    views: list[_View] = []
    if b"\r" not in block:
        start, size = 0, len(block)
        while start < size:
            end = block.find(b"\n", start + _DECODE_BYTES)
            piece = block[start : size if end < 0 else end]
            try:
                part = _block_decoder.decode(b"".join((b"[", piece.replace(b"\n", b","), b"]")))
            except msgspec.DecodeError:
                break
            if len(part) != piece.count(b"\n") + 1:
                break
            views += part
            start = size if end < 0 else end + 1
        else:
            return views, None
    lines = split_block(block)
    return _decode_all(lines, batch_id), lines


def _decode_all(lines: list[bytes], batch_id: str) -> list[_View]:
    """Each line's view (a malformed line is a broken download)."""
    decode = _decoder.decode
    try:
        return [decode(line) for line in lines]
    except msgspec.DecodeError as exc:
        raise ResultStreamError(batch_id, f"malformed result line: {exc}") from exc


async def results(
    receive: ObjectReceiveStream[list[EndedBatch]],
    /,
    *,
    client: Client,
    ledger: Ledger,
    sink: ResultSink,
    config: PipelineConfig,
    capacity: Capacity,
    progress: JobCounters,
    resumed: dict[int, int] | None = None,
    prices: PriceTable = DEFAULT_PRICES,
    canceling: anyio.Event | None = None,
) -> None:
    """Collect every ended batch, one after the other, into ``sink``; while
    ``canceling`` is set, canceled results are held in the ledger (a job cancel)."""
    collector = ResultsCollector(
        client=client,
        ledger=ledger,
        sink=sink,
        config=config,
        capacity=capacity,
        progress=progress,
        resumed=resumed,
        prices=prices,
        canceling=canceling,
    )
    async with receive:
        async for batch in receive:
            for ended in batch:
                progress.ended += ended.request_count
                await collector.collect(ended)
