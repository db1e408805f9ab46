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

from ._config import DEFAULT_BASE_URL, PipelineConfig
from ._errors import UsageError
from ._job import EMULATOR_API_KEY as EMULATOR_API_KEY
from ._job import EMULATOR_BATCH_SECONDS as EMULATOR_BATCH_SECONDS
from ._job import EMULATOR_POLL_INTERVAL as EMULATOR_POLL_INTERVAL
from ._job import JobFiles, JobResources, _freeze_heap, _thaw_heap
from ._observe import JobObserver, tracing_enabled
from ._run import JobRun, RunState, collapse
from ._stats import ModelUsage, PipelineStatistics
from .api._client import check_base_url, check_environment, check_secret
from .stages._compose import StageSpec, compose
from .stages._protocol import SourceStage
from .stages.sink import ResultSink
from .stages.source import DEFAULT_CHUNK_SIZE

if TYPE_CHECKING:
    from collections.abc import Awaitable, Sequence
    from types import TracebackType

    from anyio.abc import TaskGroup

    from ._pricing import PriceTable
    from .api._client import Client
    from .ledger._base import JobSpec, Ledger
    from .stages._items import RejectLine
    from .stages._protocol import JobCounters

__all__ = ("Pipeline",)

logger = logging.getLogger("pipeline")


class _State(enum.Enum):
    UNOPENED = "unopened"
    RUNNING = "running"
    CLOSED = "closed"


Source = str | os.PathLike[str] | Iterable[Any] | AsyncIterable[Any] | SourceStage
Output = str | os.PathLike[str] | Callable[[Any], "Awaitable[object]"] | ResultSink
Rejects = str | os.PathLike[str] | Callable[["RejectLine"], "Awaitable[object]"]


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

    ``stages``: the job's composition (``pipeline.stages``): user stages alone
    (``build_requests``, ``on_records``, ``on_requests``, ``process_results``) are
    inserted into the standard chain; a list that names standard stages
    (``pipeline.stages.VALIDATE``, ...) is the whole chain. Checked here, before
    anything runs: a stage that does not take what the one before it gives is a
    ``UsageError`` naming both.

    Run it with ``await pipeline.run()``, or ``async with pipeline:`` (and ``await
    pipeline.wait()``); watch it with ``statistics()``; ``stop()`` it, or
    ``cancel()`` its job. The pipeline
    owns its life cycle only; a ``JobFiles``, a ``JobResources`` and, per run, a
    ``JobRun`` do the work.
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
        stages: Sequence[StageSpec] | None = None,
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
        self._files = JobFiles(
            input=self._input_path,
            output=self._output_path,
            rejects=self._rejects_path,
            state=Path(state) if state is not None else None,
            ledger_given=ledger is not None,
            overwrite=overwrite,
        )
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
        self._plan = compose(
            stages,
            dry_run=self.config.dry_run != "off",
            spend_guard=self.config.budget_usd is not None,
            records=isinstance(source, Iterable | AsyncIterable)
            and not isinstance(source, str | bytes),
        )
        if self._plan.spend_guard and self.config.budget_usd is None:
            raise UsageError("the spend_guard stage needs a budget: PipelineConfig(budget_usd=...)")
        self._run_state = RunState(self.config)
        self._state = _State.UNOPENED
        self._started = 0.0
        self._elapsed = 0.0
        self._result: PipelineStatistics | None = None
        self._tg: TaskGroup | None = None
        self._done = anyio.Event()
        self._error: BaseException | None = None
        #: ``wait()`` raised ``_error`` to its caller: ``__aexit__`` does not again
        self._error_raised = False
        #: bytes per read of a file source (tests make it small)
        self._source_chunk_size = DEFAULT_CHUNK_SIZE
        #: metrics, traces, health (``observer()``); None until asked for, or traced
        self._observer: JobObserver | None = None
        #: a canceled job is run again only when this is True (``--resume-canceled``):
        #: its canceled requests are sent again
        self.resume_canceled = resume_canceled
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
        return self._files.state

    @property
    def _progress(self) -> JobCounters:
        """The live counters (``JobCounters``), for subclasses."""
        return self._run_state.counters

    def job_spec(self) -> JobSpec:
        """What identifies this job in its ledger (its files and the input's
        fingerprint): what ``Ledger.open`` is given."""
        return self._files.spec()

    def _check_before_start(self) -> None:
        """What can be refused before anything is opened (the command line's check)."""
        if self._client_given is None:  # the key, token and URL the run would take
            check_environment(
                self.config.api_key_env, api_key=self._api_key, base_url=self._base_url
            )
        self._files.check_before_start()

    def statistics(self) -> PipelineStatistics:
        """A snapshot of the job's progress (cheap; safe to call any time)."""
        state = self._run_state
        p = state.counters
        elapsed = self._elapsed
        if self._state is _State.RUNNING:
            elapsed = time.monotonic() - self._started
        dry_run_calls = 0
        if state.dry_run_meter is not None:
            dry_run_calls = state.dry_run_meter.statistics().calls
        return PipelineStatistics(
            read=p.read,
            rejected=p.rejected,
            submitted=p.submitted,
            in_flight=max(0, p.in_flight),
            ended=p.ended,
            written=p.written,
            retrying=max(0, p.spooled),
            deferred=max(0, p.deferred),
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
            filtered=state.held.filtered if state.held is not None else 0,
            total=self._total(),
            finished=state.finished,
            stopped_reason=state.stopped_reason,
            canceled=state.canceled,
        )

    def _total(self) -> int | None:
        """Requests the job will write: known once the source is done (everything
        read and checked, so ``read - rejected``; later rejects, such as duplicates
        found at submission, lower it). None while reading, or when the input was
        cut short by a stop or the budget."""
        state = self._run_state
        p = state.counters
        if p.total is not None:
            return p.total
        if not p.source_done or state.stop.is_set() or state.input_cut:
            return None
        held = state.held
        changed = held.fanned - held.filtered if held is not None else 0
        return max(0, p.read - p.rejected + changed)

    def observer(self) -> JobObserver:
        """What watches this job's API calls and batches (for ``JobMonitor`` and
        traces); made on first use, before the run starts."""
        if self._observer is None:
            self._observer = JobObserver()
        return self._observer

    def stop(self, reason: str = "stop requested") -> None:
        """Stop gracefully: read no more input, send or spool the batch in hand,
        flush and commit; batches at the service are collected on the next start."""
        self._run_state.request_stop(reason)

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
            self._run_state.begin_cancel("job canceled (Pipeline.cancel)")
            await self._ended.wait()
            return self.statistics()
        if self._state is _State.CLOSED:
            raise UsageError(
                "this Pipeline's run has ended; build a new one with the same state to "
                "cancel its job"
            )
        self._run_state.cancel_only = True
        return await self.run()

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
            raise collapse(group)  # noqa: B904 (keeps the StageError's own __cause__)
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
            raise collapse(group)  # noqa: B904 (keeps the StageError's own __cause__)
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
        """One run: its resources and its ``JobRun`` (subclasses add to ``stack``)."""
        observer = self._observer
        if observer is None and tracing_enabled():
            observer = self.observer()
        if observer is not None:
            files = self._files
            name = str(files.input or files.output or files.state or "")
            stack.enter_context(observer.job(name, self.statistics))
        resources = JobResources(
            files=self._files,
            config=self.config,
            ledger=self._ledger_given,
            client=self._client_given,
            api_key=self._api_key,
            base_url=self._base_url,
            default_base_url=DEFAULT_BASE_URL,
            emulator_dir=self._emulator_dir,
            announce=self._announce,
            prices=self._prices,
            output=self._output,
            rejects_callback=self._rejects_callback,
        )
        run = JobRun(
            state=self._run_state,
            files=self._files,
            resources=resources,
            plan=self._plan,
            source=self._source,
            open_ended=self.open_ended,
            prices=self._prices,
            announce=self._announce,
            source_chunk_size=self._source_chunk_size,
            observer=observer,
            resume_canceled=self.resume_canceled,
        )
        await run.run(stack)
        self.config = resources.config


def _log_notice(message: str) -> None:
    logger.info(message)
