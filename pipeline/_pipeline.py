"""The runner: ``Pipeline`` wires the stages together over bounded streams, in one
task group, around one client, one ledger and the sinks.

::

    source -> validate -> dry_run -> spend_guard -> chunker -> submitter -> poller -> results -> sink
                                                      ^                                  |
                                                      +--- retry feeder <- spool (ledger) +
    rejects: ledger -> rejects writer -> rejects file

Errors: a stage that fails cancels the others, and ``run()`` raises one
``StageError`` naming the stage, whose ``__cause__`` is the original error (every
task group's ``ExceptionGroup``, the embedded emulator's included, is collapsed to
its first stage failure). Errors before the stages start (the state file, the
input, an output a fresh job would overwrite) are raised as they are. ``async with
pipeline:`` raises the same error on the way out, unless ``wait()`` raised it.

Stopping: ``stop()`` is graceful (stop reading the source, send or spool what is in
hand, flush and commit the sinks; batches at the service keep running and are
collected on the next start; ``run()`` returns with ``stopped_reason`` set).
Cancelling the task that runs ``run()`` is immediate, and the state on disk stays
consistent (every ledger step is one transaction; sinks are truncated back to their
last commit on the next start).
"""

from __future__ import annotations

import enum
import gc
import hashlib
import logging
import os
import time
from collections.abc import AsyncIterable, Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeGuard

import anyio

from ._config import DEFAULT_BASE_URL, DEFAULT_POLL_INTERVAL, PipelineConfig
from ._errors import BudgetExceededError, PipelineError, StageError, UsageError
from ._pricing import DEFAULT_PRICES
from ._stats import ModelUsage, PipelineStatistics
from .api._client import Client
from .ledger._base import BatchRecord, JobSpec
from .stages._items import SubmittedBatch
from .stages._protocol import Capacity, Progress, SourceStage
from .stages.chunker import chunker
from .stages.poller import poller
from .stages.results import results
from .stages.retry import retry_feeder
from .stages.sink import CallbackSink, JsonlSink, ResultSink, rejects_callback, rejects_writer
from .stages.source import DEFAULT_CHUNK_SIZE, iterable_source, jsonl_source
from .stages.submitter import submitter
from .stages.validate import validate

if TYPE_CHECKING:
    from collections.abc import Awaitable, Coroutine
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ._pricing import PriceTable
    from .ledger._base import Ledger, ResumeState
    from .stages._items import RejectLine

__all__ = ("Pipeline",)

logger = logging.getLogger("pipeline")

#: The key the embedded emulator is called with (it accepts any key).
EMULATOR_API_KEY = "emulator-local-key"
#: How fast the embedded emulator processes a batch, in seconds.
EMULATOR_BATCH_SECONDS = 0.2
#: Poll floor against the embedded emulator (it ends batches within a second).
EMULATOR_POLL_INTERVAL = 0.1
#: Lists of batch records buffered on the submitter -> poller -> results edges.
_RECORD_BUFFER = 16


class _State(enum.Enum):
    UNOPENED = "unopened"
    RUNNING = "running"
    CLOSED = "closed"


Source = str | os.PathLike[str] | Iterable[Any] | AsyncIterable[Any] | SourceStage
Output = str | os.PathLike[str] | Callable[[Any], "Awaitable[object]"] | ResultSink
Rejects = str | os.PathLike[str] | Callable[["RejectLine"], "Awaitable[object]"]


class _Stopped(Exception):
    """A wait cut short by ``stop()`` where going on makes no sense (a reconcile
    waiting for its settle time): the intent stays for the next start."""


class Pipeline:
    """One job: requests from ``source`` through the Message Batches API, results to
    ``output``, and every input that cannot be sent to ``rejects``.

    ``source``: a JSONL file path, any sync/async iterable of entries (dicts,
    Structs or encoded bytes), or a ``SourceStage``: ``async def my_source(send,
    /, *, stop, start_line)``, for sources that never run dry (a queue, a watched
    directory; see ``pipeline.stages._protocol.SourceStage``). ``output``: a JSONL file path, an async callback
    called with each ``ResultLine``, or a ``ResultSink``. ``rejects``: a JSONL file
    path (default for a file output: ``RESULTS.rejects.jsonl`` next to it), or an
    async callback called with each reject (a ``RejectLine``: ``line``,
    ``custom_id``, ``error``; at-least-once across a crash, like a result callback);
    None otherwise: rejects are then only counted and kept in the state file.
    ``state``: the ledger's SQLite file (default ``<output>.state``); ``ledger``
    replaces it with any ``Ledger``. A new job refuses to overwrite a non-empty
    output or rejects file unless ``overwrite=True``.

    The service, as ``pipeline run`` picks it: ``client`` if given; else the key is
    ``api_key``, or the environment variable ``config.api_key_env``
    (``ANTHROPIC_API_KEY``) when not given, and the URL ``base_url`` (default: the
    Anthropic API). With no key and no base URL at all, the emulator is started
    in-process on loopback, and said so through ``announce`` (default: an INFO
    record on the ``pipeline`` logger). ``prices`` replaces ``DEFAULT_PRICES`` for
    the dry run's estimates and the spend guard.

    Run it with ``await pipeline.run()``, or ``async with pipeline:`` (and ``await
    pipeline.wait()``); watch it with ``statistics()``; ``stop()`` it.
    """

    #: True for sources that never run dry for good (a queue, a watched directory):
    #: their end is not the job's end, so the job is never marked finished and a
    #: restart with the same state goes on.
    open_ended: ClassVar[bool] = False

    def __init__(
        self,
        source: Source,
        output: Output,
        rejects: Rejects | None = None,
        *,
        config: PipelineConfig | None = None,
        client: Client | None = None,
        api_key: str | None = None,
        base_url: str | None = None,
        state: str | os.PathLike[str] | None = None,
        ledger: Ledger | None = None,
        emulator_dir: str | os.PathLike[str] | None = None,
        announce: Callable[[str], None] | None = None,
        prices: PriceTable | None = None,
        overwrite: bool = False,
    ) -> None:
        self.config = config if config is not None else PipelineConfig()
        if not isinstance(source, str | os.PathLike | Iterable | AsyncIterable) and not callable(
            source
        ):
            raise UsageError(
                f"source must be a file path, an iterable of entries or a source stage, "
                f"not {type(source).__name__}"
            )
        self._source = source
        self._input_path = Path(source) if isinstance(source, str | os.PathLike) else None
        self._output = output
        self._output_path = Path(output) if isinstance(output, str | os.PathLike) else None
        self._rejects_callback: Callable[[RejectLine], Awaitable[object]] | None = None
        self._rejects_path: Path | None = None
        if callable(rejects):
            self._rejects_callback = rejects
        elif rejects is not None:
            self._rejects_path = Path(rejects)
        elif self._output_path is not None:
            out = self._output_path
            self._rejects_path = out.with_name(out.stem + ".rejects" + (out.suffix or ".jsonl"))
        if state is None and ledger is None:
            if self._output_path is None:
                raise UsageError(
                    "state= (the job's state file) is required when output is not a file"
                )
            state = self._output_path.with_name(self._output_path.name + ".state")
        self._state_path = Path(state) if state is not None else None
        self._ledger_given = ledger
        self._client_given = client
        self._api_key = api_key
        self._base_url = base_url
        self._emulator_dir = emulator_dir
        self._announce = announce if announce is not None else _log_notice
        self._prices = prices
        self._overwrite = overwrite
        self._state = _State.UNOPENED
        self._progress = Progress()
        self._capacity = Capacity(self.config.max_in_flight)
        self._stop = anyio.Event()
        self._stopped_reason: str | None = None
        #: the input was cut short (budget reached): upstream streams break by design
        self._input_cut = False
        self._started = 0.0
        self._elapsed = 0.0
        self._finished = False
        self._dry_run_meter: Any = None
        self._spent_before = 0.0
        self._result: PipelineStatistics | None = None
        self._tg: TaskGroup | None = None
        self._done = anyio.Event()
        self._error: BaseException | None = None
        #: ``wait()`` raised ``_error`` to its caller: ``__aexit__`` does not again
        self._error_raised = False
        self._client: Client | None = None
        #: bytes per read of a file source (tests make it small)
        self._source_chunk_size = DEFAULT_CHUNK_SIZE

    def __repr__(self) -> str:
        return (
            f"Pipeline(source={self._source!r}, output={self._output!r}, state={self._state.value})"
        )

    # -- observing and stopping -----------------------------------------------------

    @property
    def output_path(self) -> Path | None:
        return self._output_path

    @property
    def rejects_path(self) -> Path | None:
        return self._rejects_path

    @property
    def state_path(self) -> Path | None:
        return self._state_path

    def statistics(self) -> PipelineStatistics:
        """A snapshot of the job's progress (cheap; safe to call any time)."""
        p = self._progress
        elapsed = self._elapsed
        if self._state is _State.RUNNING:
            elapsed = time.monotonic() - self._started
        dry_run_calls = 0
        if self._dry_run_meter is not None:
            dry_run_calls = self._dry_run_meter.statistics().calls
        return PipelineStatistics(
            read=p.read,
            rejected=p.rejected,
            submitted=p.submitted,
            in_flight=max(0, p.in_flight),
            ended=p.ended,
            written=p.written,
            retrying=max(0, p.spooled),
            batches_submitted=p.batches_submitted,
            batches_in_flight=max(0, p.batches_in_flight),
            outcomes=dict(p.outcomes),
            usage={m: ModelUsage(int(u[0]), int(u[1]), u[2]) for m, u in p.usage.items()},
            estimated_cost_usd=p.estimated_cost_usd,
            actual_cost_usd=p.actual_cost_usd,
            dry_run_calls=dry_run_calls,
            elapsed_seconds=elapsed,
            total=self._total(),
            finished=self._finished,
            stopped_reason=self._stopped_reason,
        )

    def _total(self) -> int | None:
        """Requests the job will write: known once the source is done (everything
        read and checked, so ``read - rejected``; later rejects, such as duplicates
        found at submission, lower it). None while reading, or when the input was
        cut short by a stop or the budget."""
        p = self._progress
        if p.total is not None:
            return p.total
        if not p.source_done or self._stop.is_set() or self._input_cut:
            return None
        return max(0, p.read - p.rejected)

    def stop(self, reason: str = "stop requested") -> None:
        """Stop gracefully: read no more input, send or spool the batch in hand,
        flush and commit; batches at the service are collected on the next start."""
        if self._stop.is_set():
            return
        self._stopped_reason = reason
        self._progress.stopping = True
        self._stop.set()
        self._capacity.interrupt()
        self._progress.changed()

    def _cut_input(self, reason: str) -> None:
        """Submit nothing more (the spend guard ended its stream) but collect every
        batch in flight; the job stays unfinished, so a re-run goes on from the
        checkpoint."""
        self._stopped_reason = reason
        self._input_cut = True
        self._progress.changed()

    # -- running ---------------------------------------------------------------------

    async def run(self) -> PipelineStatistics:
        """Run the job to its end (or until ``stop()``); its final statistics."""
        if self._state is not _State.UNOPENED:
            raise UsageError("a Pipeline runs once; build a new one to run again")
        self._state = _State.RUNNING
        self._started = time.monotonic()
        _freeze_heap()
        try:
            async with AsyncExitStack() as stack:
                await self._run(stack)
        except BaseExceptionGroup as group:
            # the embedded emulator's task group wraps a stage failure once more
            raise _collapse(group)  # noqa: B904 (keeps the StageError's own __cause__)
        finally:
            _thaw_heap()
            self._elapsed = time.monotonic() - self._started
            self._state = _State.CLOSED
        stats = self.statistics()
        self._result = stats
        return stats

    async def __aenter__(self) -> Pipeline:
        """Start the job in the background; ``wait()`` for it, ``stop()`` it."""
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self._tg.start_soon(self._run_in_background)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Wait for the job to end (cancel it if the body raised); raise its failure
        (one ``StageError`` for a stage) unless ``wait()`` already raised it."""
        assert self._tg is not None
        if exc is not None:
            self._tg.cancel_scope.cancel()
        try:
            suppressed = await self._tg.__aexit__(exc_type, exc, tb)
        except BaseExceptionGroup as group:
            raise _collapse(group)  # noqa: B904 (keeps the StageError's own __cause__)
        if exc is None and self._error is not None and not self._error_raised:
            self._error_raised = True
            raise self._error
        return suppressed

    async def _run_in_background(self) -> None:
        try:
            await self.run()
        except Exception as exc:
            self._error = exc
        finally:
            self._done.set()

    async def wait(self) -> PipelineStatistics:
        """Wait for a job started with ``async with`` to end; its statistics (or its error)."""
        await self._done.wait()
        if self._error is not None:
            self._error_raised = True
            raise self._error
        assert self._result is not None
        return self._result

    async def aclose(self) -> None:
        """Stop the job at once if it runs in the background (idempotent)."""
        if self._tg is not None and not self._done.is_set():
            self._tg.cancel_scope.cancel()
        await anyio.lowlevel.checkpoint()

    # -- the run -------------------------------------------------------------------

    async def _run(self, stack: AsyncExitStack) -> None:
        state_path = self._state_path
        if self._ledger_given is None and state_path is not None and not state_path.exists():
            self._check_overwrite()  # before the state file exists: a re-run checks again
        ledger = await self._open_ledger(stack)
        resume = await ledger.open(self._job_spec())
        if resume.fresh:
            self._check_overwrite()
        if resume.finished and not self.open_ended:
            await self._already_finished(ledger)
            return
        client = await self._open_client(stack)
        sink = self._output_sink()
        await sink.open(resume.output)
        stack.push_async_callback(sink.aclose)
        rejects_sink: ResultSink | None = None
        if self._rejects_path is not None:
            rejects_sink = JsonlSink(self._rejects_path)
        elif self._rejects_callback is not None:
            rejects_sink = rejects_callback(self._rejects_callback)
        if rejects_sink is not None:
            await rejects_sink.open(resume.rejects)
            stack.push_async_callback(rejects_sink.aclose)
        try:
            resumed = await self._resume(resume, ledger, client)
        except _Stopped:
            return  # stopped while settling a create of unknown outcome: next start
        await self._run_stages(client, ledger, sink, rejects_sink, resume, resumed)

    def _check_overwrite(self) -> None:
        """A new job starts its output and rejects files empty: refuse to wipe one
        that holds data, unless told to."""
        if self._overwrite:
            return
        for what, path in (("output", self._output_path), ("rejects", self._rejects_path)):
            if path is not None and path.is_file() and path.stat().st_size > 0:
                raise UsageError(
                    f"{what} file {path} is not empty and this is a new job (no state in "
                    f"{self._state_path or 'the ledger'}): pass --overwrite (Python: "
                    "overwrite=True) to replace it, or remove it"
                )

    async def _already_finished(self, ledger: Ledger) -> None:
        """A re-run of a finished job: its counts from the ledger, and a warning."""
        status = await ledger.status()
        p = self._progress
        p.read, p.rejected, p.submitted = status.read, status.rejected, status.submitted
        p.ended, p.written = status.ended, status.written
        p.source_done = True
        self._finished = True
        logger.warning(
            "this job already finished; nothing to do (state %s). Remove the state file "
            "to run it again (with --overwrite / overwrite=True to replace its output).",
            self._state_path or "in the ledger",
        )

    async def _resume(
        self, resume: ResumeState, ledger: Ledger, client: Client
    ) -> list[tuple[BatchRecord, int]]:
        """Settle creates of unknown outcome; the batches to poll again, each with
        the requests it still owes."""
        p = self._progress
        #: what earlier runs claimed, by estimate: a budget holds for the whole job
        self._spent_before = resume.estimated_cost_usd
        p.spooled = resume.spooled
        p.rejected = resume.rejects.count
        p.written = resume.output.count
        p.read = p.accounted_line = resume.source_line
        batches = [(b, b.request_count - b.results_written) for b in resume.batches]
        if resume.pending_intents:
            from .ledger._reconcile import reconcile

            report = await reconcile(
                ledger, client, resume.pending_intents, sleep=self._settle_sleep
            )
            by_id = {i.local_id: i for i in resume.pending_intents}
            batches += [(record, record.request_count) for record in report.adopted]
            p.spooled += sum(by_id[i].request_count for i in report.released)
            self._announce(
                f"pipeline: reconciled {len(by_id)} batch create(s) of unknown outcome: "
                f"{len(report.adopted)} found at the service, {len(report.released)} to send again"
            )
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
        send_chunks, recv_chunks = _stream(config.chunk_buffer)
        # batch records: small, so these edges never hold memory worth bounding
        send_sub, recv_sub = _stream(_RECORD_BUFFER)
        send_ended, recv_ended = _stream(_RECORD_BUFFER)
        rejects_done = anyio.Event()
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
                    reconcile=self._reconciler(ledger, client),
                    sleep=self._sleep,
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
                ),
            ),
            (
                "retry",
                retry_feeder(
                    retry_send, ledger=ledger, config=config, progress=p, path=self._input_path
                ),
            ),
        ]
        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(
                    self._guard,
                    "rejects",
                    rejects_writer(
                        ledger=ledger,
                        sink=rejects_sink,
                        progress=p,
                        position=resume.rejects,
                        done=rejects_done,
                    ),
                )
                async with anyio.create_task_group() as main:
                    for name, coro in stages:
                        main.start_soon(self._guard, name, coro)
                rejects_done.set()
                p.rejects_recorded.set()
        except BaseExceptionGroup as group:
            raise _collapse(group)  # noqa: B904 (keeps the StageError's own __cause__)
        if not self._stop.is_set() and not self._input_cut and p.cycle_done:
            # an open-ended source ended for now (a queue closed at shutdown): all
            # done for this run, but a restart with the same state goes on
            if not self.open_ended:
                await ledger.mark_finished()
            self._finished = True

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
            await jsonl_source(
                send,
                path=self._input_path,
                start_offset=resume.source_offset,
                start_line=resume.source_line,
                chunk_size=self._source_chunk_size,
                stop=self._stop,
            )
        elif _is_source_stage(source):
            async with send:
                await source(send, stop=self._stop, start_line=resume.source_line)
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

    def _reconciler(
        self, ledger: Ledger, client: Client
    ) -> Callable[[int, int, int, float], Awaitable[str | None]]:
        async def reconcile_one(local_id: int, n: int, size: int, sent_at: float) -> str | None:
            from .ledger._reconcile import reconcile

            record = BatchRecord(
                local_id=local_id,
                batch_id=None,
                state="sending",
                request_count=n,
                body_bytes=size,
                sent_at=sent_at,
            )
            report = await reconcile(ledger, client, [record], sleep=self._settle_sleep)
            return report.adopted[0].batch_id if report.adopted else None

        return reconcile_one

    async def _sleep(self, seconds: float) -> None:
        """A sleep that a ``stop()`` cuts short."""
        with anyio.move_on_after(seconds):
            await self._stop.wait()

    async def _settle_sleep(self, seconds: float) -> None:
        """A reconcile's wait for a create to show up at the service (up to a
        minute): a ``stop()`` ends it with ``_Stopped``, the intent stays pending."""
        await self._sleep(seconds)
        if self._stop.is_set():
            raise _Stopped

    # -- resources -----------------------------------------------------------------

    async def _open_client(self, stack: AsyncExitStack) -> Client:
        if self._client_given is not None:
            self._client = self._client_given
            return self._client
        api_key, base_url = self._api_key, self._base_url
        if api_key is None:  # as the command line does: the key from the environment
            api_key = os.environ.get(self.config.api_key_env) or None
        if api_key is None and base_url is None:
            base_url = await self._start_emulator(stack)
            api_key = EMULATOR_API_KEY
        client = Client(api_key=api_key, base_url=base_url or DEFAULT_BASE_URL)
        self._client = await stack.enter_async_context(client)
        return self._client

    async def _start_emulator(self, stack: AsyncExitStack) -> str:
        from .emulator import EmulatorConfig
        from .testing import serve_emulator

        data_dir = Path(self._emulator_dir) if self._emulator_dir is not None else None
        if data_dir is None and self._state_path is not None:
            data_dir = self._state_path.with_name(self._state_path.name + ".emulator")
        emu_config = EmulatorConfig(batch_seconds=EMULATOR_BATCH_SECONDS)
        handle = await stack.enter_async_context(serve_emulator(emu_config, data_dir=data_dir))
        if self.config.poll_interval == DEFAULT_POLL_INTERVAL:
            self.config = _with(self.config, poll_interval=EMULATOR_POLL_INTERVAL)
        self._announce(
            f"pipeline: no API key and no base URL: running on the local emulator at {handle.url} "
            f"(set {self.config.api_key_env} to use the Message Batches API)"
        )
        return handle.url

    async def _open_ledger(self, stack: AsyncExitStack) -> Ledger:
        if self._ledger_given is not None:
            ledger = self._ledger_given
        else:
            from .ledger._sqlite import SQLiteLedger

            assert self._state_path is not None
            ledger = SQLiteLedger(self._state_path)
        stack.push_async_callback(_shielded(ledger.aclose))
        return ledger

    def _output_sink(self) -> ResultSink:
        output = self._output
        if isinstance(output, str | os.PathLike):
            return JsonlSink(output)
        if hasattr(output, "commit") and hasattr(output, "write"):
            return output  # type: ignore[return-value]
        return CallbackSink(output)  # type: ignore[arg-type]

    def _job_spec(self) -> JobSpec:
        fingerprint = None
        if self._input_path is not None:
            fingerprint = _fingerprint(self._input_path)
        return JobSpec(
            input_path=str(self._input_path.absolute()) if self._input_path else None,
            input_fingerprint=fingerprint,
            output_path=str(self._output_path.absolute()) if self._output_path else None,
            rejects_path=str(self._rejects_path.absolute()) if self._rejects_path else None,
        )


def _is_source_stage(source: object) -> TypeGuard[SourceStage]:
    """A callable that is not itself an iterable of entries nor a path."""
    return callable(source) and not isinstance(source, str | os.PathLike | Iterable | AsyncIterable)


def _fingerprint(path: Path) -> str:
    """Hash of the input's first MiB and its size: a state file refuses another input."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1 << 20)
            size = handle.seek(0, os.SEEK_END)
    except OSError as exc:
        from ._errors import InputError

        raise InputError(f"cannot read input {str(path)!r}: {exc.strerror}") from exc
    return f"{size}:{hashlib.blake2b(head, digest_size=16).hexdigest()}"


def _stream(size: int) -> tuple[Any, Any]:
    return anyio.create_memory_object_stream[Any](size)


def _with(config: PipelineConfig, **changes: Any) -> PipelineConfig:
    import msgspec

    return msgspec.structs.replace(config, **changes)


def _shielded(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await fn()

    return close


def _log_notice(message: str) -> None:
    logger.info(message)


#: Pipelines running in this process; the first one freezes the heap, the last
#: one to end thaws it.
_running = 0


def _freeze_heap() -> None:
    """Move every object alive at start-up out of the cyclic GC's reach: the client
    runs a full ``gc.collect()`` after each create (PERFORMANCE.md, the httpx
    trap), which is then cheap. Garbage is collected first, so none is frozen."""
    global _running
    _running += 1
    if _running == 1:
        gc.collect()
        gc.freeze()


def _thaw_heap() -> None:
    global _running
    _running -= 1
    if _running == 0:
        gc.unfreeze()


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
