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

Canceling the job (``await pipeline.cancel()``, ``pipeline cancel`` from another
process, or the budget with ``budget_action="cancel"``) is another thing: it stops
the job as ``stop()`` does, then cancels its batches at the service, collects them
and marks the job canceled (``_cancel.JobCancel``); a re-run says so instead of
resubmitting, unless ``resume_canceled=True``.
"""

from __future__ import annotations

import enum
import logging
import os
import time
from collections.abc import AsyncIterable, Callable, Iterable
from contextlib import AsyncExitStack
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import anyio

from ._cancel import JobCancel
from ._config import AUTH_TOKEN_ENV, BASE_URL_ENV, DEFAULT_BASE_URL, PipelineConfig
from ._errors import UsageError
from ._observe import JobObserver, tracing_enabled
from ._pipeline_resources import EMULATOR_API_KEY as EMULATOR_API_KEY
from ._pipeline_resources import EMULATOR_BATCH_SECONDS as EMULATOR_BATCH_SECONDS
from ._pipeline_resources import EMULATOR_POLL_INTERVAL as EMULATOR_POLL_INTERVAL
from ._pipeline_resources import _freeze_heap, _JobResources, _thaw_heap
from ._pipeline_wiring import _collapse, _StageWiring, _Stopped
from ._stats import ModelUsage, PipelineStatistics
from .api._client import Client, check_base_url, check_secret
from .stages._protocol import Capacity, Progress, SourceStage
from .stages.sink import ResultSink
from .stages.source import DEFAULT_CHUNK_SIZE

if TYPE_CHECKING:
    from collections.abc import Awaitable
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ._pricing import PriceTable
    from .ledger._base import Ledger, ResumeState
    from .stages._items import RejectLine

__all__ = ("Pipeline",)

logger = logging.getLogger("pipeline")


class _State(enum.Enum):
    UNOPENED = "unopened"
    RUNNING = "running"
    CLOSED = "closed"


Source = str | os.PathLike[str] | Iterable[Any] | AsyncIterable[Any] | SourceStage
Output = str | os.PathLike[str] | Callable[[Any], "Awaitable[object]"] | ResultSink
Rejects = str | os.PathLike[str] | Callable[["RejectLine"], "Awaitable[object]"]


class Pipeline(_JobResources, _StageWiring):
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
    output or rejects file unless ``overwrite=True``. A job that was canceled
    (``cancel()``) runs again only with ``resume_canceled=True``, which sends its
    canceled requests again and goes on.

    The service, as ``pipeline run`` picks it: ``client`` if given; else the key is
    ``api_key``, or the environment variable ``config.api_key_env``
    (``ANTHROPIC_API_KEY``) when not given, and the URL ``base_url`` (default: the
    Anthropic API). With no key and no base URL at all, the emulator is started
    in-process on loopback, and said so through ``announce`` (default: an INFO
    record on the ``pipeline`` logger). ``prices`` replaces ``DEFAULT_PRICES`` for
    the dry run's estimates and the spend guard.

    Run it with ``await pipeline.run()``, or ``async with pipeline:`` (and ``await
    pipeline.wait()``); watch it with ``statistics()``; ``stop()`` it, or
    ``cancel()`` its job.
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
        resume_canceled: bool = False,
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
        self._input_read_to: int | None = None
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
        self._check_paths()
        # a key or URL that cannot work is refused now, not in the middle of a run
        check_secret(api_key, "the API key (api_key)")
        check_base_url(base_url, "the base URL (base_url, --base-url)")
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
        self._number_from = 0
        self._result: PipelineStatistics | None = None
        self._tg: TaskGroup | None = None
        self._done = anyio.Event()
        self._error: BaseException | None = None
        #: ``wait()`` raised ``_error`` to its caller: ``__aexit__`` does not again
        self._error_raised = False
        self._client: Client | None = None
        #: bytes per read of a file source (tests make it small)
        self._source_chunk_size = DEFAULT_CHUNK_SIZE
        #: metrics, traces, health (``observer()``); None until asked for, or traced
        self._observer: JobObserver | None = None
        #: a canceled job is run again only when this is True (``--resume-canceled``):
        #: its canceled requests are sent again
        self.resume_canceled = resume_canceled
        #: the job is to be canceled (``cancel()``, a recorded request, the budget)
        self._cancel_wanted = False
        #: ``run()`` is only to complete a cancel (``cancel()`` on a job not running)
        self._cancel_only = False
        self._job_cancel: JobCancel | None = None
        self._cancel_reason = "job canceled"
        self._canceled = False
        self._ended = anyio.Event()

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
            retried=p.retried,
            usage={
                m: ModelUsage(int(u[0]), int(u[1]), u[2], *map(int, u[3:]))
                for m, u in p.usage.items()
            },
            estimated_cost_usd=p.estimated_cost_usd,
            actual_cost_usd=p.actual_cost_usd,
            unpriced_models=tuple(sorted(p.unpriced)),
            dry_run_calls=dry_run_calls,
            elapsed_seconds=elapsed,
            total=self._total(),
            finished=self._finished,
            stopped_reason=self._stopped_reason,
            canceled=self._canceled,
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

    def observer(self) -> JobObserver:
        """What watches this job's API calls and batches (for ``JobMonitor`` and
        traces); made on first use, before the run starts."""
        if self._observer is None:
            self._observer = JobObserver()
        return self._observer

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

    async def cancel(self) -> PipelineStatistics:
        """Cancel the job: submit nothing more, cancel its batches in flight at the
        service, write what they finished (their canceled requests are held as
        canceled, not written nor re-sent) and mark the job canceled, so that a
        re-run says so instead of resubmitting (``resume_canceled=True`` sends the
        canceled requests again). On a running pipeline it stops the run and waits
        for it to end; on one not started it opens the job's state, completes the
        cancel and returns (as ``pipeline cancel`` does). Crash-safe and idempotent:
        the intent is recorded in the ledger first, and whoever runs the job next
        completes a cancel cut short. The final statistics (``canceled`` is True)."""
        if self._state is _State.RUNNING:
            self._begin_cancel("job canceled (Pipeline.cancel)")
            await self._ended.wait()
            return self.statistics()
        if self._state is _State.CLOSED:
            raise UsageError(
                "this Pipeline's run has ended; build a new one with the same state to "
                "cancel its job"
            )
        self._cancel_only = True
        return await self.run()

    def _begin_cancel(self, reason: str) -> None:
        """The job is to be canceled: stop as ``stop()`` does, and from now on hold
        canceled results; the run completes the cancel once its stages end."""
        self._cancel_wanted = True
        self._cancel_reason = reason
        if self._job_cancel is not None:
            self._job_cancel.canceling.set()
        self.stop(reason)

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
            self._ended.set()
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
        observer = self._observer
        if observer is None and tracing_enabled():
            observer = self.observer()
        if observer is not None:
            name = str(self._input_path or self._output_path or self._state_path or "")
            stack.enter_context(observer.job(name, self.statistics))
        if not self._cancel_only:
            self._check_before_start()
        ledger = await self._open_ledger(stack)
        resume = await self._open_job(ledger)
        if resume.fresh:
            self._check_overwrite()
        if resume.cancel == "canceled" and (self._cancel_only or not self.resume_canceled):
            await self._already_canceled(ledger)
            return
        if resume.finished and not self.open_ended:
            await self._already_finished(ledger, resume)
            return
        client = await self._open_client(stack)
        if observer is not None:
            observer.attach(client)
        sink, rejects_sink = await self._open_sinks(stack, resume)
        self._job_cancel = JobCancel(
            ledger=ledger,
            client=client,
            config=self.config,
            progress=self._progress,
            prices=self._price_table(),
        )
        if self._cancel_only or self._cancel_wanted or resume.cancel == "requested":
            # a cancel asked for now, or one a crash cut short: complete it first
            await self._complete_cancel(sink, resumed_cancel=resume.cancel == "requested")
            return
        if resume.cancel == "canceled":  # resume_canceled: send them again on purpose
            again = await ledger.resume_canceled()
            resume.spooled += again
            self._announce(f"pipeline: job was canceled; {again:,} canceled request(s) sent again")
        try:
            resumed = await self._resume(resume, ledger, client)
        except _Stopped:
            if not self._cancel_wanted:
                return  # stopped while settling a create of unknown outcome: next start
        else:
            await self._run_stages(client, ledger, sink, rejects_sink, resume, resumed)
        if self._cancel_wanted:
            await self._complete_cancel(sink)

    async def _open_job(self, ledger: Ledger) -> ResumeState:
        """Open the job's state; to cancel a job, whatever job the state holds (its
        input is not read: it may have changed or be gone)."""
        open_existing = getattr(ledger, "open_existing", None)
        if self._cancel_only and self._ledger_given is None and open_existing is not None:
            resume: ResumeState = await open_existing()
            return resume
        # the input's fingerprint reads all of it: not on the event loop
        return await ledger.open(await anyio.to_thread.run_sync(self._job_spec))

    async def _complete_cancel(self, sink: ResultSink, *, resumed_cancel: bool = False) -> None:
        """Complete the job's cancel (``JobCancel.complete``) and say what it left."""
        job_cancel = self._job_cancel
        assert job_cancel is not None
        self._cancel_wanted = True
        job_cancel.canceling.set()
        self.stop(self._cancel_reason)
        held = await job_cancel.complete(sink)
        self._canceled = True
        again = "re-run with --resume-canceled (Python: resume_canceled=True) to send them again"
        if resumed_cancel and self.resume_canceled and not self._cancel_only:
            again = "this run completed a cancel cut short; re-run with --resume-canceled now"
        self._stopped_reason = f"{self._cancel_reason}: {held:,} request(s) canceled; {again}"
        logger.warning(
            "%s",
            self._stopped_reason,
            extra={"batches_canceled": job_cancel.batches_canceled, "canceled": held},
        )

    # -- resources -----------------------------------------------------------------

    # It stays here, not with the other resources: tests point this module's
    # DEFAULT_BASE_URL at a local service.
    async def _open_client(self, stack: AsyncExitStack) -> Client:
        if self._client_given is not None:
            self._client = self._client_given
            return self._client
        api_key, base_url, token = self._api_key, self._base_url, None
        if api_key is None:  # as the command line does: the key from the environment
            api_key = os.environ.get(self.config.api_key_env) or None
        if api_key is None:  # as the SDK does: a bearer token instead (some gateways)
            token = os.environ.get(AUTH_TOKEN_ENV) or None
        if base_url is None:  # as the SDK does: a gateway named in the environment
            base_url = os.environ.get(BASE_URL_ENV) or None
        if api_key is None and token is None and base_url is None:
            base_url = await self._start_emulator(stack)
            api_key = EMULATOR_API_KEY
        client = Client(api_key=api_key, auth_token=token, base_url=base_url or DEFAULT_BASE_URL)
        self._client = await stack.enter_async_context(client)
        return self._client


def _log_notice(message: str) -> None:
    logger.info(message)
