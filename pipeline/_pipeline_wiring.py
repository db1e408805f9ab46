"""The run proper, once the ledger, the client and the sinks are open: the resume
step, then the stages wired over bounded streams in one task group.

Resume settles what an earlier run left behind: every batch in flight is polled
again, its requests counted against the capacity before anything new is sent, and
creates of unknown outcome are reconciled with the service (adopted, or released
to the spool) by a task beside the stages (``settle_pending``), which holds new
creates back until then while everything else goes on.

Wiring: validate, then the optional stages (``dry_run``, ``spend_guard``), then the
chunker, submitter, poller and results, with the retry feeder sending the spool
back into the chunker's input and the rejects writer beside them in an outer task
group. Each stage runs under ``_guard``, which names it in a ``StageError``; a
stream broken because the input was stopped or cut short is a normal end.

``_StageWiring`` is a mixin of ``Pipeline``: it holds no state of its own and
reads the attributes that ``Pipeline.__init__`` sets, declared below for mypy.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

import anyio

from ._errors import PipelineError, StageError
from ._pricing import DEFAULT_PRICES
from .ledger._reconcile import reconciler, settle_pending
from .stages._items import SubmittedBatch
from .stages.chunker import chunker
from .stages.poller import poller
from .stages.results import results
from .stages.retry import retry_feeder
from .stages.sink import rejects_writer
from .stages.source import iterable_source, jsonl_source
from .stages.submitter import submitter
from .stages.validate import validate

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from pathlib import Path

    from ._cancel import JobCancel
    from ._config import PipelineConfig
    from ._errors import BudgetExceededError
    from ._pipeline import Source
    from ._pricing import PriceTable
    from .api._client import Client
    from .ledger._base import BatchRecord, Ledger, ResumeState
    from .stages._protocol import Capacity, Progress, SourceStage
    from .stages.sink import ResultSink

logger = logging.getLogger("pipeline")

#: Lists of batch records buffered on the submitter -> poller -> results edges.
_RECORD_BUFFER = 16


class _Stopped(Exception):
    """A wait cut short by ``stop()`` where going on makes no sense (a reconcile
    waiting for its settle time): the intent stays for the next start."""


class _StageWiring:
    """The part of ``Pipeline`` that resumes a job and runs its stages."""

    open_ended: ClassVar[bool]
    config: PipelineConfig
    _source: Source
    _input_path: Path | None
    #: the offset the input was read up to in this run (None: not read to its end)
    _input_read_to: int | None
    _source_chunk_size: int
    _prices: PriceTable | None
    _client: Client | None
    _announce: Callable[[str], None]
    _progress: Progress
    _capacity: Capacity
    _stop: anyio.Event
    _stopped_reason: str | None
    _input_cut: bool
    _finished: bool
    _dry_run_meter: Any
    _spent_before: float
    _number_from: int
    _job_cancel: JobCancel | None

    def _begin_cancel(self, reason: str) -> None: ...

    async def _resume(
        self, resume: ResumeState, ledger: Ledger, client: Client
    ) -> list[tuple[BatchRecord, int]]:
        """Counters from the ledger; the batches to poll again, each with the
        requests it still owes."""
        p = self._progress
        #: what earlier runs claimed, by estimate: a budget holds for the whole job
        self._spent_before = resume.estimated_cost_usd
        p.estimated_cost_usd = resume.estimated_cost_usd  # the job's, not this run's
        # A source that cannot replay its input numbers on from the highest line the
        # job holds, not from the checkpoint (claims may stand past a held entry).
        self._number_from = await ledger.last_line() if self.open_ended else resume.source_line
        p.spooled = resume.spooled
        p.rejected = resume.rejects.count
        p.written = resume.output.count
        p.read = p.accounted_line = resume.source_line
        batches = [(b, b.request_count - b.results_written) for b in resume.batches]
        # creates of unknown outcome are settled beside the stages (``settle_pending``)
        if batches:
            self._announce(f"pipeline: resuming; {len(batches)} batch(es) in flight polled again")
        for record, owed in batches:
            p.outstanding += owed
            p.in_flight += record.request_count
            p.batches_in_flight += 1
            self._capacity.force(record.request_count)
        return batches

    async def _run_stages(
        self,
        client: Client,
        ledger: Ledger,
        sink: ResultSink,
        rejects_sink: ResultSink | None,
        resume: ResumeState,
        resumed: list[tuple[BatchRecord, int]],
    ) -> None:
        config, p = self.config, self._progress
        size = config.buffer_size
        ends: list[Any] = []  # every stream end, closed again when the run ends

        def _stream(size: int) -> tuple[Any, Any]:
            pair = anyio.create_memory_object_stream[Any](size)
            ends.extend(pair)
            return pair

        send_raw, recv_raw = _stream(size)
        send_checked, recv_checked = _stream(size)
        stages: list[tuple[str, Coroutine[Any, Any, None]]] = [
            ("source", self._source_stage(send_raw, resume)),
            (
                "validate",
                validate(
                    recv_raw,
                    send_checked,
                    config=config,
                    models=config.models,
                    progress=p,
                    prices=self._price_table(),
                ),
            ),
        ]
        # validate -> [dry_run] -> [spend_guard] -> chunker
        for name, stage in self._extra_stages():
            send_next, recv_next = _stream(size)
            stages.append((name, stage(recv_checked, send_next)))
            recv_checked = recv_next
            send_checked = send_next
        retry_send = send_checked.clone()
        ends.append(retry_send)
        send_chunks, recv_chunks = _stream(config.chunk_buffer)
        # batch records: small, so these edges never hold memory worth bounding
        send_sub, recv_sub = _stream(_RECORD_BUFFER)
        send_ended, recv_ended = _stream(_RECORD_BUFFER)
        rejects_done = anyio.Event()
        if resume.pending_intents:  # settled beside the stages; new creates wait
            send_adopted = send_sub.clone()
            ends.append(send_adopted)
            settle = settle_pending(
                resume.pending_intents,
                send_adopted,
                ledger=ledger,
                client=client,
                capacity=self._capacity,
                progress=p,
                since=resume.takeover_at,
                announce=self._announce,
                sleep=self._settle_sleep,
            )
            stages.append(("reconcile", settle))
        stages += [
            ("chunker", chunker(recv_checked, send_chunks, config=config, progress=p)),
            (
                "submitter",
                submitter(
                    recv_chunks,
                    send_sub,
                    client=client,
                    ledger=ledger,
                    config=config,
                    capacity=self._capacity,
                    progress=p,
                    reconcile=reconciler(ledger, client, sleep=self._settle_sleep),
                    sleep=self._sleep,
                    canceling=self._job_cancel.canceling if self._job_cancel else None,
                ),
            ),
            (
                "poller",
                poller(
                    recv_sub,
                    send_ended,
                    client=client,
                    ledger=ledger,
                    config=config,
                    progress=p,
                    resumed=[
                        SubmittedBatch(
                            r.local_id,
                            r.batch_id or "",
                            r.request_count,
                            r.sent_at if r.sent_at is not None else time.time(),
                        )
                        for r, _ in resumed
                    ],
                    sleep=self._sleep,
                ),
            ),
            (
                "results",
                results(
                    recv_ended,
                    client=client,
                    ledger=ledger,
                    sink=sink,
                    config=config,
                    capacity=self._capacity,
                    progress=p,
                    resumed={r.local_id: owed for r, owed in resumed},
                    prices=self._price_table(),
                    canceling=self._job_cancel.canceling if self._job_cancel else None,
                ),
            ),
            (
                "retry",
                retry_feeder(
                    retry_send, ledger=ledger, config=config, progress=p, path=self._input_path
                ),
            ),
        ]
        writer = rejects_writer(
            ledger=ledger,
            sink=rejects_sink,
            progress=p,
            position=resume.rejects,
            done=rejects_done,
        )
        watch_scope = anyio.CancelScope()
        watch = self._watch_cancel(watch_scope)
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._guard, "rejects", writer)
                tg.start_soon(self._guard, "cancel", watch)
                async with anyio.create_task_group() as main:
                    for name, coro in stages:
                        main.start_soon(self._guard, name, coro)
                watch_scope.cancel()
                rejects_done.set()
                p.rejects_recorded.set()
        except BaseExceptionGroup as group:
            raise _collapse(group)  # noqa: B904 (keeps the StageError's own __cause__)
        finally:
            # A stage cancelled before its first step (another failed at once) never
            # entered its ``async with``: close its coroutine and the stream ends it
            # would have closed (both idempotent), or they leak until the GC warns.
            for coro in [writer, watch, *(c for _, c in stages)]:
                coro.close()
            for end in ends:
                end.close()
        if not self._stop.is_set() and not self._input_cut and p.cycle_done:
            # an open-ended source ended for now (a queue closed at shutdown): all
            # done for this run, but a restart with the same state goes on
            if not self.open_ended:
                await ledger.mark_finished()
            self._finished = True
            self._warn_if_input_grew()

    async def _watch_cancel(self, scope: anyio.CancelScope) -> None:
        """The hook by which a running job learns of a cancel: ``JobCancel.watch``
        checks the ledger once per poll interval (another process may record one:
        ``pipeline cancel``); cancelled (``scope``) once the stages end."""
        with scope:
            # a ledger written before cancel existed: no cancel from another process
            if self._job_cancel is not None and hasattr(
                self._job_cancel.ledger, "cancel_requested"
            ):
                await self._job_cancel.watch(
                    lambda: self._begin_cancel("job canceled (pipeline cancel)")
                )

    def _warn_if_input_grew(self) -> None:
        """Lines appended to the input after it was read to its end are not sent:
        say so when the job finishes, rather than only when a re-run refuses the
        changed input."""
        path, read_to = self._input_path, self._input_read_to
        if path is None or read_to is None:
            return
        try:
            size = path.stat().st_size
        except OSError:
            return
        if size > read_to:
            logger.warning(
                "the input %s grew while the job ran: it was read to byte %s and now has "
                "%s bytes; the lines after were not sent. Put new requests in a file of "
                "their own (a re-run refuses a changed input), or use a WatchPipeline for "
                "an input that keeps growing.",
                path,
                f"{read_to:,}",
                f"{size:,}",
            )

    async def _guard(self, name: str, coro: Coroutine[Any, Any, None]) -> None:
        """Run one stage; its failure becomes ``StageError(name)``. A stream broken
        because a downstream stage ended early (a stop, a budget cut) is a normal end."""
        try:
            await coro
        except _Stopped:
            pass  # a reconcile cut short by a stop: the intent waits for the next start
        except (anyio.BrokenResourceError, anyio.ClosedResourceError) as exc:
            if not (self._stop.is_set() or self._input_cut):
                raise StageError(name, exc) from exc
        except Exception as exc:
            raise StageError(name, exc) from exc

    async def _source_stage(self, send: Any, resume: ResumeState) -> None:
        source = self._source
        if self._input_path is not None:
            self._input_read_to = await jsonl_source(
                send,
                path=self._input_path,
                start_offset=resume.source_offset,
                start_line=resume.source_line,
                chunk_size=self._source_chunk_size,
                stop=self._stop,
                max_line=self.config.max_batch_bytes,
            )
        elif _is_source_stage(source):
            async with send:
                await source(send, stop=self._stop, start_line=self._number_from)
        else:
            assert isinstance(source, Iterable | AsyncIterable)
            await iterable_source(send, items=source, skip=resume.source_line, stop=self._stop)

    def _price_table(self) -> PriceTable:
        return self._prices if self._prices is not None else DEFAULT_PRICES

    def _extra_stages(self) -> list[tuple[str, Callable[[Any, Any], Coroutine[Any, Any, None]]]]:
        """The optional stages between validate and the chunker."""
        config = self.config
        prices = self._price_table()
        out: list[tuple[str, Callable[[Any, Any], Coroutine[Any, Any, None]]]] = []
        if config.dry_run != "off":
            from .stages.dryrun import DryRunMeter, dry_run

            self._dry_run_meter = meter = DryRunMeter()
            client = self._client
            assert client is not None

            async def _dry(r: Any, s: Any) -> None:
                await dry_run(r, s, client=client, config=config, meter=meter, prices=prices)

            out.append(("dry_run", _dry))
        if config.budget_usd is not None:
            from .stages.budget import SpendMeter, spend_guard

            spend = SpendMeter()

            async def _guard(r: Any, s: Any) -> None:
                await spend_guard(
                    r,
                    s,
                    config=config,
                    meter=spend,
                    on_exceeded=self._budget_reached,
                    prices=prices,
                    spent_usd=self._spent_before,
                )

            out.append(("spend_guard", _guard))
        return out

    def _budget_reached(self, exc: BudgetExceededError) -> None:
        logger.warning("%s", exc)
        self._cut_input(str(exc))
        if self.config.budget_action == "cancel":  # and cancel what is in flight too
            self._begin_cancel(f"{exc} (budget action: cancel)")

    def _cut_input(self, reason: str) -> None:
        """Submit nothing more (the spend guard ended its stream) but collect every
        batch in flight; the job stays unfinished, so a re-run goes on from the
        checkpoint."""
        self._stopped_reason = reason
        self._input_cut = True
        self._progress.changed()

    async def _sleep(self, seconds: float) -> None:
        """A sleep that a ``stop()`` cuts short."""
        with anyio.move_on_after(seconds):
            await self._stop.wait()

    async def _settle_sleep(self, seconds: float) -> None:
        """A reconcile's wait until the service's list is authoritative (seconds
        after the takeover): a ``stop()`` ends it with ``_Stopped``, the intent
        stays pending."""
        await self._sleep(seconds)
        if self._stop.is_set():
            raise _Stopped


def _is_source_stage(source: object) -> TypeGuard[SourceStage]:
    """A callable that is not itself an iterable of entries nor a path."""
    return callable(source) and not isinstance(source, str | os.PathLike | Iterable | AsyncIterable)


def _collapse(group: BaseExceptionGroup[Any]) -> BaseException:
    """The first stage failure of a task group's exceptions (else the first error)."""
    leaves = list(_leaves(group))
    for exc in leaves:
        if isinstance(exc, StageError):
            return exc
    for exc in leaves:
        if isinstance(exc, PipelineError | Exception):
            return exc
    return leaves[0] if leaves else group


def _leaves(exc: BaseException) -> Iterable[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from _leaves(inner)
    else:
        yield exc
