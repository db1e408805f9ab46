"""One run of a job: ``RunState`` (the run-only state that ``Pipeline`` reads and
stops: counters, capacity, the stop event) and ``JobRun`` (opens the job's
resources, resumes, then runs the stage graph in one task group).

Resume settles what an earlier run left behind: creates of unknown outcome are
reconciled with the service (adopted, or released to the spool), and every batch
in flight is polled again, its requests counted against the capacity before
anything new is sent.

The graph is the composition's ``Plan``: the source, the stages before validate
(user stages on records, the request builder), validate, the stages between
validate and the chunker (user stages on requests, dry run, spend guard), then
the core (chunker, submitter, poller, results) with the retry feeder sending the
spool back into the chunker's input, and the rejects writer beside them in an
outer task group. Each stage runs under ``_guard``, which names it in a
``StageError``; a stream broken because the input was stopped or cut short is a
normal end. With a user stage on the request side, ``HeldLines`` keeps the
checkpoints right (``pipeline.stages._user``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import AsyncIterable, Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeGuard

import anyio
import anyio.to_thread

from ._cancel import JobCancel
from ._errors import PipelineError, StageError, UsageError
from ._pricing import DEFAULT_PRICES
from .ledger._reconcile import reconciler, settle_pending
from .stages._items import SubmittedBatch
from .stages._process import ProcessingSink
from .stages._protocol import Capacity, JobCounters
from .stages._user import HeldLines, Record, UserStage
from .stages.chunker import ChunkHandoff, chunker
from .stages.poller import poller
from .stages.results import results
from .stages.retry import retry_feeder
from .stages.sink import JsonlSink, rejects_writer
from .stages.source import iterable_source, jsonl_source
from .stages.submitter import submitter
from .stages.validate import Validator, validate

if TYPE_CHECKING:
    from collections.abc import Coroutine
    from contextlib import AsyncExitStack

    from ._config import PipelineConfig
    from ._errors import BudgetExceededError
    from ._job import JobFiles, JobResources
    from ._observe import JobObserver
    from ._pricing import PriceTable
    from .api._client import Client
    from .ledger._base import BatchRecord, Ledger, ResumeState, SinkPosition
    from .stages._compose import Plan, StageSpec
    from .stages._protocol import SourceStage
    from .stages.sink import ResultSink

__all__ = ("JobRun", "RunState")

logger = logging.getLogger("pipeline")

#: Lists of batch records buffered on the submitter -> poller -> results edges.
_RECORD_BUFFER = 16


class RunState:
    """What a run shares with its ``Pipeline`` (uvicorn's ``ServerState``): the live
    counters, the in-flight capacity, the stop event and why the run stopped. Made
    with the pipeline, so ``stop()`` and ``statistics()`` work before, during and
    after the run."""

    def __init__(self, config: PipelineConfig) -> None:
        self.counters = JobCounters()
        self.capacity = Capacity(config.max_in_flight)
        self.stop = anyio.Event()
        self.stopped_reason: str | None = None
        #: the input was cut short (budget reached): upstream streams break by design
        self.input_cut = False
        self.finished = False
        self.dry_run_meter: Any = None
        #: items user stages hold (None: no user stage on the request side)
        self.held: HeldLines | None = None
        #: the result processor's sink, when there is one
        self.processing: ProcessingSink | None = None
        #: the job is to be canceled (``cancel()``, a recorded request, the budget)
        self.cancel_wanted = False
        #: the run is only to complete a cancel (``cancel()`` on a job not running)
        self.cancel_only = False
        self.job_cancel: JobCancel | None = None
        self.cancel_reason = "job canceled"
        self.canceled = False

    def begin_cancel(self, reason: str) -> None:
        """The job is to be canceled: stop as ``stop()`` does, and from now on hold
        canceled results; the run completes the cancel once its stages end."""
        self.cancel_wanted = True
        self.cancel_reason = reason
        if self.job_cancel is not None:
            self.job_cancel.canceling.set()
        self.request_stop(reason)

    def request_stop(self, reason: str) -> None:
        if self.stop.is_set():
            return
        self.stopped_reason = reason
        self.counters.stopping = True
        self.stop.set()
        self.capacity.interrupt()
        self.counters.changed()


class _Stopped(Exception):
    """A wait cut short by ``stop()`` where going on makes no sense (a reconcile
    waiting for its settle time): the intent stays for the next start."""


class JobRun:
    """One run of a job (trio's ``Nursery`` to the pipeline's ``NurseryManager``):
    holds what only this run needs and runs the stage graph.

    **Parameters:**

    * **state** - the pipeline's ``RunState``.
    * **files** / **resources** - the job's ``JobFiles`` and ``JobResources``.
    * **plan** - the checked composition (``pipeline.stages.compose``).
    * **source** - the job's source (a path, an iterable, a source stage).
    * **open_ended** - the source never runs dry for good (a queue, a directory).
    * **prices** - the price table, if not the default.
    * **announce** - where notices go.
    * **source_chunk_size** - bytes per read of a file source.
    * **observer** - what watches the job's API calls and batches, if anything.
    * **resume_canceled** - run a canceled job again, sending its canceled requests.
    """

    def __init__(
        self,
        *,
        state: RunState,
        files: JobFiles,
        resources: JobResources,
        plan: Plan,
        source: Any,
        open_ended: bool,
        prices: PriceTable | None,
        announce: Callable[[str], None],
        source_chunk_size: int,
        observer: JobObserver | None = None,
        resume_canceled: bool = False,
    ) -> None:
        self.state = state
        self.resume_canceled = resume_canceled
        self.observer = observer
        self.files = files
        self.resources = resources
        self.plan = plan
        self.source = source
        self.open_ended = open_ended
        self.prices = prices if prices is not None else DEFAULT_PRICES
        self.announce = announce
        self.source_chunk_size = source_chunk_size
        self.config = resources.config
        self.client: Client | None = None
        #: the offset the input was read up to in this run (None: not read to its end)
        self.input_read_to: int | None = None
        self.spent_before = 0.0
        self.number_from = 0

    async def run(self, stack: AsyncExitStack) -> None:
        """Open what the job needs (on ``stack``), resume, run the stages."""
        files, resources, state = self.files, self.resources, self.state
        if not state.cancel_only:
            resources.check_service()
            files.check_before_start()
        ledger = await resources.open_ledger(stack)
        resume = await self._open_job(ledger)
        if resume.fresh:
            files.check_overwrite()
            self._check_routes()
        if resume.cancel == "canceled" and (state.cancel_only or not self.resume_canceled):
            await self._already_canceled(ledger)
            return
        if resume.finished and not self.open_ended:
            await self._already_finished(ledger, resume)
            return
        client = self.client = await resources.open_client(stack)
        if self.observer is not None:
            self.observer.attach(client)
        self.config = resources.config
        sink, rejects_sink = await resources.open_sinks(
            stack, resume, wrap=self._processing(ledger, resume.sinks)
        )
        state.job_cancel = JobCancel(
            ledger=ledger,
            client=client,
            config=self.config,
            progress=state.counters,
            prices=self.prices,
        )
        if state.cancel_only or state.cancel_wanted or resume.cancel == "requested":
            # a cancel asked for now, or one a crash cut short: complete it first
            await self._complete_cancel(sink, resumed_cancel=resume.cancel == "requested")
            return
        if resume.cancel == "canceled":  # resume_canceled: send them again on purpose
            again = await ledger.resume_canceled()
            resume.spooled += again
            self.announce(f"pipeline: job was canceled; {again:,} canceled request(s) sent again")
        try:
            resumed = await self._resume(resume, ledger, client)
        except _Stopped:
            if not state.cancel_wanted:
                return  # stopped while settling a create of unknown outcome: next start
        else:
            await self._run_stages(client, ledger, sink, rejects_sink, resume, resumed)
        if state.cancel_wanted:
            await self._complete_cancel(sink)

    async def _open_job(self, ledger: Ledger) -> ResumeState:
        """Open the job's state; to cancel a job, whatever job the state holds (its
        input is not read: it may have changed or be gone)."""
        open_existing = getattr(ledger, "open_existing", None)
        if self.state.cancel_only and not self.files.ledger_given and open_existing is not None:
            resume: ResumeState = await open_existing()
            return resume
        # the input's fingerprint reads all of it: not on the event loop
        return await ledger.open(await anyio.to_thread.run_sync(self.files.spec))

    async def _complete_cancel(self, sink: ResultSink, *, resumed_cancel: bool = False) -> None:
        """Complete the job's cancel (``JobCancel.complete``) and say what it left."""
        state = self.state
        job_cancel = state.job_cancel
        assert job_cancel is not None
        state.cancel_wanted = True
        job_cancel.canceling.set()
        state.request_stop(state.cancel_reason)
        held = await job_cancel.complete(sink)
        state.canceled = True
        again = "re-run with --resume-canceled (Python: resume_canceled=True) to send them again"
        if resumed_cancel and self.resume_canceled and not state.cancel_only:
            again = "this run completed a cancel cut short; re-run with --resume-canceled now"
        state.stopped_reason = f"{state.cancel_reason}: {held:,} request(s) canceled; {again}"
        logger.warning(
            "%s",
            state.stopped_reason,
            extra={"batches_canceled": job_cancel.batches_canceled, "canceled": held},
        )

    async def _already_canceled(self, ledger: Ledger) -> None:
        """A re-run of a canceled job: its counts from the ledger, and why it stops."""
        status = await ledger.status()
        p = self.state.counters
        p.read, p.rejected, p.submitted = status.read, status.rejected, status.submitted
        p.ended, p.written, p.spooled = status.ended, status.written, status.spooled
        if status.canceled:
            p.outcome("canceled", status.canceled)
        self.state.canceled = True
        self.state.stopped_reason = (
            f"this job was canceled: {status.canceled:,} request(s) canceled, "
            f"{status.spooled:,} waiting to be re-sent, input read to line {status.read:,}; "
            "nothing was sent. Re-run with --resume-canceled (Python: resume_canceled=True) "
            "to send them and go on"
        )
        logger.warning("%s", self.state.stopped_reason)

    def _processing(
        self, ledger: Ledger, route_positions: dict[str, SinkPosition]
    ) -> Callable[[ResultSink], ResultSink] | None:
        processor = self.plan.processor
        if processor is None:
            return None
        fn = processor.fn
        assert fn is not None

        def wrap(sink: ResultSink) -> ResultSink:
            self.state.processing = ProcessingSink(
                sink,
                fn,
                ledger=ledger,
                input_path=self.files.input,
                records=self.source,
                routes={
                    name: JsonlSink(route) if isinstance(route, str | os.PathLike) else route
                    for name, route in processor.routes.items()
                },
                route_positions=route_positions,
            )
            return self.state.processing

        return wrap

    def _check_routes(self) -> None:
        """A new job starts its routes' files empty too: refuse to wipe one."""
        processor = self.plan.processor
        if processor is None or self.files.overwrite:
            return
        for name, route in processor.routes.items():
            if not isinstance(route, str | os.PathLike) or not os.path.isfile(route):
                continue
            if os.path.getsize(route) > 0:
                raise UsageError(
                    f"route {name!r} file {route} is not empty and this is a new job: pass "
                    "overwrite=True to replace it, or remove it"
                )

    async def _already_finished(self, ledger: Ledger, resume: ResumeState) -> None:
        """A re-run of a finished job: its files checked against the ledger (one cut
        short is an error), its counts from the ledger, and a warning."""
        for path, position in (
            (self.files.output, resume.output),
            (self.files.rejects, resume.rejects),
        ):
            if path is not None:
                await JsonlSink(path).check(position)
        status = await ledger.status()
        p = self.state.counters
        p.read, p.rejected, p.submitted = status.read, status.rejected, status.submitted
        p.ended, p.written = status.ended, status.written
        p.estimated_cost_usd = status.estimated_cost_usd
        p.source_done = True
        self.state.finished = True
        if self.state.cancel_only:
            logger.warning("this job already finished; nothing to cancel")
            return
        logger.warning(
            "this job already finished; nothing to do (state %s). Remove the state file "
            "to run it again (with --overwrite / overwrite=True to replace its output).",
            self.files.state or "in the ledger",
        )

    async def _resume(
        self, resume: ResumeState, ledger: Ledger, client: Client
    ) -> list[tuple[BatchRecord, int]]:
        """Counters from the ledger; the batches to poll again, each with the
        requests it still owes."""
        p = self.state.counters
        #: what earlier runs claimed, by estimate: a budget holds for the whole job
        self.spent_before = resume.estimated_cost_usd
        p.estimated_cost_usd = resume.estimated_cost_usd  # the job's, not this run's
        # A source that cannot replay its input numbers on from the highest line the
        # job holds, not from the checkpoint (claims may stand past a held entry).
        self.number_from = await ledger.last_line() if self.open_ended else resume.source_line
        p.spooled = resume.spooled
        p.deferred = resume.deferred
        p.rejected = resume.rejects.count
        p.written = resume.output.count
        p.read = p.accounted_line = resume.source_line
        batches = [(b, b.request_count - b.results_written) for b in resume.batches]
        # creates of unknown outcome are settled beside the stages (``settle_pending``)
        if batches:
            self.announce(f"pipeline: resuming; {len(batches)} batch(es) in flight polled again")
        for record, owed in batches:
            p.outstanding += owed
            p.in_flight += record.request_count
            p.batches_in_flight += 1
            self.state.capacity.force(record.request_count)
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
        config, state = self.config, self.state
        p = state.counters
        size = config.buffer_size
        ends: list[Any] = []  # every stream end, closed again when the run ends

        def _stream(size: int) -> tuple[Any, Any]:
            pair = anyio.create_memory_object_stream[Any](size)
            ends.extend(pair)
            return pair

        plan = self.plan
        held = state.held = HeldLines() if plan.tracked else None
        first_user = True

        def _user(spec: StageSpec, receive: Any, send: Any) -> Coroutine[Any, Any, None]:
            nonlocal first_user
            assert spec.fn is not None
            kind = "builder" if spec.output == "request line" else spec.input or ""
            assert held is not None
            stage = UserStage(
                spec.fn,
                kind=kind,
                general=spec.general,
                upstream=receive,
                downstream=send,
                held=held,
                register=first_user,
                validator=self._validator() if kind == "request" else None,
                counters=p,
            )
            first_user = False
            return stage.run()

        stages: list[tuple[str, Coroutine[Any, Any, None]]] = []
        send_next, recv_next = _stream(size)
        stages.append(("source", self._source_stage(send_next, resume)))
        # source -> [stages on records, the request builder] -> validate
        for spec in plan.before_validate:
            send_out, recv_out = _stream(size)
            stages.append((spec.name, _user(spec, recv_next, send_out)))
            recv_next = recv_out
        send_checked, recv_checked = _stream(size)
        stages.append(
            (
                "validate",
                (plan.replacement("validate") or validate)(
                    recv_next,
                    send_checked,
                    config=config,
                    models=config.models,
                    progress=p,
                    prices=self.prices,
                ),
            )
        )
        # validate -> [stages on requests, dry_run, spend_guard] -> chunker
        for spec in plan.after_validate:
            send_next, recv_next = _stream(size)
            if spec.standard:
                stage = self._standard_stage(spec.name, spec.fn)
                stages.append((spec.name, stage(recv_checked, send_next)))
            else:
                stages.append((spec.name, _user(spec, recv_checked, send_next)))
            recv_checked = recv_next
            send_checked = send_next
        retry_send = send_checked.clone()
        ends.append(retry_send)
        send_chunks, recv_chunks = _stream(config.chunk_buffer)
        # low memory: one chunk at a time (the chunker waits until the submitter let go
        # of the last), and the entries of the input file go without their bytes (the
        # standard submitter reads them back from the file as it sends the body)
        handoff = ChunkHandoff() if config.one_chunk_at_a_time else None
        chunker_options: dict[str, Any] = {}
        submitter_options: dict[str, Any] = {}
        # the standard submitter reads an entry that came without its bytes back from
        # the input file: retries always do (a round waits in the chunker's queue), and
        # with low memory every line of the file (a stage's own chunker or submitter
        # is given every entry's bytes)
        reads_back = self.files.input is not None and plan.replacement("submitter") is None
        retries_light = reads_back and plan.replacement("chunker") is None
        if reads_back:
            submitter_options["input_path"] = self.files.input
        if handoff is not None:
            chunker_options["handoff"] = handoff
            if reads_back:
                chunker_options["drop_file_bytes"] = True
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
                capacity=state.capacity,
                progress=p,
                since=resume.takeover_at,
                announce=self.announce,
                sleep=self._settle_sleep,
            )
            stages.append(("reconcile", settle))
        stages += [
            (
                "chunker",
                (plan.replacement("chunker") or chunker)(
                    recv_checked,
                    send_chunks,
                    config=config,
                    progress=p,
                    held=held,
                    **chunker_options,
                ),
            ),
            (
                "submitter",
                (plan.replacement("submitter") or submitter)(
                    recv_chunks if handoff is None else handoff.receiver(recv_chunks),
                    send_sub,
                    client=client,
                    ledger=ledger,
                    config=config,
                    capacity=state.capacity,
                    progress=p,
                    reconcile=reconciler(ledger, client, sleep=self._settle_sleep),
                    sleep=self._sleep,
                    canceling=state.job_cancel.canceling if state.job_cancel else None,
                    **submitter_options,
                ),
            ),
            (
                "poller",
                (plan.replacement("poller") or poller)(
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
                "results" if plan.processor is None else plan.processor.name,
                (plan.replacement("results") or results)(
                    recv_ended,
                    client=client,
                    ledger=ledger,
                    sink=sink,
                    config=config,
                    capacity=state.capacity,
                    progress=p,
                    resumed={r.local_id: owed for r, owed in resumed},
                    prices=self.prices,
                    canceling=state.job_cancel.canceling if state.job_cancel else None,
                ),
            ),
            (
                "retry",
                retry_feeder(
                    retry_send,
                    ledger=ledger,
                    config=config,
                    progress=p,
                    path=self.files.input,
                    drop_file_bytes=retries_light,
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
            raise collapse(group)  # noqa: B904 (keeps the StageError's own __cause__)
        finally:
            # A stage cancelled before its first step (another failed at once) never
            # entered its ``async with``: close its coroutine and the stream ends it
            # would have closed (both idempotent), or they leak until the GC warns.
            for coro in [writer, watch, *(c for _, c in stages)]:
                coro.close()
            for end in ends:
                end.close()
        if not state.stop.is_set() and not state.input_cut and p.cycle_done:
            # an open-ended source ended for now (a queue closed at shutdown): all
            # done for this run, but a restart with the same state goes on
            if not self.open_ended:
                await ledger.mark_finished()
            state.finished = True
            self._warn_if_input_grew()

    async def _watch_cancel(self, scope: anyio.CancelScope) -> None:
        """The hook by which a running job learns of a cancel: ``JobCancel.watch``
        checks the ledger once per poll interval (another process may record one:
        ``pipeline cancel``); cancelled (``scope``) once the stages end."""
        job_cancel = self.state.job_cancel
        with scope:
            # a ledger written before cancel existed: no cancel from another process
            if job_cancel is not None and hasattr(job_cancel.ledger, "cancel_requested"):
                await job_cancel.watch(
                    lambda: self.state.begin_cancel("job canceled (pipeline cancel)")
                )

    def _validator(self) -> Validator:
        """Checks the requests a user stage on requests emitted, as validate does."""
        config = self.config
        return Validator(
            max_batch_bytes=config.max_batch_bytes,
            models=config.models,
            prices=self.prices,
            allow_fields=config.allow_fields,
        )

    def _warn_if_input_grew(self) -> None:
        """Lines appended to the input after it was read to its end are not sent:
        say so when the job finishes, rather than only when a re-run refuses the
        changed input."""
        path, read_to = self.files.input, self.input_read_to
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
            if not (self.state.stop.is_set() or self.state.input_cut):
                raise StageError(name, exc) from exc
        except Exception as exc:
            raise StageError(name, exc) from exc

    async def _source_stage(self, send: Any, resume: ResumeState) -> None:
        source, stop = self.source, self.state.stop
        if self.files.input is not None:
            self.input_read_to = await jsonl_source(
                send,
                path=self.files.input,
                start_offset=resume.source_offset,
                start_line=resume.source_line,
                chunk_size=self.source_chunk_size,
                stop=stop,
                max_line=self.config.max_batch_bytes,
            )
        elif _is_source_stage(source):
            async with send:
                await source(send, stop=stop, start_line=self.number_from)
        else:
            assert isinstance(source, Iterable | AsyncIterable)
            make = Record if self.plan.builder else None
            await iterable_source(send, items=source, skip=resume.source_line, stop=stop, make=make)

    def _standard_stage(
        self, name: str, replacement: Callable[..., Any] | None
    ) -> Callable[[Any, Any], Coroutine[Any, Any, None]]:
        """The dry run or the spend guard (or what replaces it), bound to this run."""
        config, prices = self.config, self.prices
        if name == "dry_run":
            from .stages.dryrun import DryRunMeter, dry_run

            dry_run = replacement or dry_run
            self.state.dry_run_meter = meter = DryRunMeter()
            client = self.client
            assert client is not None
            if config.dry_run == "off":  # listed in a composition: its default mode
                config = _with(config, dry_run="sample")

            async def _dry(r: Any, s: Any) -> None:
                await dry_run(r, s, client=client, config=config, meter=meter, prices=prices)

            return _dry
        assert name == "spend_guard"
        from .stages.budget import SpendMeter, spend_guard

        spend_guard = replacement or spend_guard
        spend = SpendMeter()

        async def _guard(r: Any, s: Any) -> None:
            await spend_guard(
                r,
                s,
                config=config,
                meter=spend,
                on_exceeded=self._budget_reached,
                prices=prices,
                spent_usd=self.spent_before,
            )

        return _guard

    def _budget_reached(self, exc: BudgetExceededError) -> None:
        logger.warning("%s", exc)
        self._cut_input(str(exc))
        if self.config.budget_action == "cancel":  # and cancel what is in flight too
            self.state.begin_cancel(f"{exc} (budget action: cancel)")

    def _cut_input(self, reason: str) -> None:
        """Submit nothing more (the spend guard ended its stream) but collect every
        batch in flight; the job stays unfinished, so a re-run goes on from the
        checkpoint."""
        self.state.stopped_reason = reason
        self.state.input_cut = True
        self.state.counters.changed()

    async def _sleep(self, seconds: float) -> None:
        """A sleep that a ``stop()`` cuts short."""
        with anyio.move_on_after(seconds):
            await self.state.stop.wait()

    async def _settle_sleep(self, seconds: float) -> None:
        """A reconcile's wait until the service's list is authoritative (seconds
        after the takeover): a ``stop()`` ends it with ``_Stopped``, the intent
        stays pending."""
        await self._sleep(seconds)
        if self.state.stop.is_set():
            raise _Stopped


def _with(config: PipelineConfig, **changes: Any) -> PipelineConfig:
    import msgspec

    return msgspec.structs.replace(config, **changes)


def _is_source_stage(source: object) -> TypeGuard[SourceStage]:
    """A callable that is not itself an iterable of entries nor a path."""
    return callable(source) and not isinstance(source, str | os.PathLike | Iterable | AsyncIterable)


def collapse(group: BaseExceptionGroup[Any]) -> BaseException:
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
