"""Progress while a job runs: a live display on a terminal, periodic plain log
lines otherwise (a worker under a supervisor), nothing when quiet.

Everything reads one callable returning ``PipelineStatistics`` (usually
``pipeline.statistics``), so the display knows nothing of the stages::

    async with progress(pipeline.statistics, mode="auto"):
        await pipeline.run()

``rich`` is imported only when the live display is shown: start-up time matters
for a command line tool, and a worker never needs it.
"""

from __future__ import annotations

import logging
import sys
from typing import TYPE_CHECKING, Any, Literal, Protocol, TextIO

import anyio

from ._logging import FIELDS_IN_MESSAGE
from ._summary import format_cost, format_duration, log_summary, print_summary

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from types import TracebackType

    from rich.console import Console, RenderableType
    from rich.live import Live

    from ._logging import LogFormat
    from ._stats import PipelineStatistics

__all__ = (
    "DEFAULT_LIVE_INTERVAL",
    "DEFAULT_PLAIN_INTERVAL",
    "PROGRESS_MODES",
    "ProgressMode",
    "ProgressReporter",
    "RunnablePipeline",
    "eta_seconds",
    "format_progress_line",
    "progress",
    "progress_fields",
    "render_live",
    "resolve_mode",
    "run_with_progress",
)

ProgressMode = Literal["auto", "live", "plain", "off"]
PROGRESS_MODES: tuple[ProgressMode, ...] = ("auto", "live", "plain", "off")

#: Seconds between refreshes of the live display.
DEFAULT_LIVE_INTERVAL = 0.25
#: Seconds between plain progress lines (a log collector does not want more).
DEFAULT_PLAIN_INTERVAL = 10.0
#: In plain mode an unchanged job is logged again after this many intervals.
_HEARTBEAT_INTERVALS = 6

logger = logging.getLogger("pipeline.progress")


def eta_seconds(stats: PipelineStatistics) -> float | None:
    """Seconds until every request is written, at the average rate so far; ``None``
    when it cannot be estimated (total unknown, or nothing written yet).
    ``stats.total`` counts the requests to write (rejects are not in it)."""
    if stats.total is None or stats.finished:
        return None
    remaining = stats.total - stats.written
    if remaining <= 0:
        return 0.0
    if stats.written <= 0 or stats.elapsed_seconds <= 0:
        return None
    return remaining * stats.elapsed_seconds / stats.written


def progress_fields(stats: PipelineStatistics) -> dict[str, Any]:
    """The structured fields of a progress log record (``extra=``)."""
    return {
        "read": stats.read,
        "rejected": stats.rejected,
        "submitted": stats.submitted,
        "in_flight": stats.in_flight,
        "ended": stats.ended,
        "written": stats.written,
        "retrying": stats.retrying,
        "batches_in_flight": stats.batches_in_flight,
        "total": stats.total,
        "elapsed_seconds": round(stats.elapsed_seconds, 3),
        "eta_seconds": _round(eta_seconds(stats)),
        "estimated_cost_usd": stats.estimated_cost_usd,
        "actual_cost_usd": stats.actual_cost_usd,
    }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def _batches(n: int) -> str:
    return f"{n:,} batch" if n == 1 else f"{n:,} batches"


def _counts_text(stats: PipelineStatistics) -> str:
    text = (
        f"read {stats.read:,} · rejected {stats.rejected:,} · submitted {stats.submitted:,}"
        f" · in flight {stats.in_flight:,} in {_batches(stats.batches_in_flight)}"
        f" · ended {stats.ended:,} · written {stats.written:,}"
    )
    if stats.retrying:
        text += f" · retrying {stats.retrying:,}"
    if stats.deferred:
        text += f" · deferred {stats.deferred:,}"
    return text


def _time_text(stats: PipelineStatistics) -> str:
    eta = eta_seconds(stats)
    text = f"elapsed {format_duration(stats.elapsed_seconds)}"
    return text if eta is None else f"{text} · ETA {format_duration(eta)}"


def _cost_text(stats: PipelineStatistics) -> str:
    return (
        f"cost estimated {format_cost(stats.estimated_cost_usd)}"
        f" · actual {format_cost(stats.actual_cost_usd)}"
    )


def format_progress_line(stats: PipelineStatistics) -> str:
    """One plain line: every count, elapsed time, ETA when known, cost."""
    of_total = f"{stats.written:,}/{stats.total:,} written · " if stats.total is not None else ""
    return f"{of_total}{_counts_text(stats)} · {_time_text(stats)} · {_cost_text(stats)}"


def render_live(stats: PipelineStatistics) -> RenderableType:
    """The live display: a bar of written requests (of the total when known),
    the counts, elapsed / ETA and cost."""
    from rich.console import Group
    from rich.progress_bar import ProgressBar
    from rich.table import Table
    from rich.text import Text

    head = Table.grid(padding=(0, 1))
    done = stats.written
    if stats.total is not None:
        bar = ProgressBar(total=max(stats.total, 1), completed=min(done, stats.total), width=30)
        head.add_row(
            Text(f"{stats.written:,}/{stats.total:,} written", style="bold"),
            bar,
            Text(f"{100 * min(done, stats.total) / max(stats.total, 1):.1f}%"),
            Text(_time_text(stats), style="cyan"),
        )
    else:
        head.add_row(
            Text(f"{stats.written:,} written", style="bold"),
            ProgressBar(total=None, width=30),
            Text(_time_text(stats), style="cyan"),
        )
    return Group(head, Text("  " + _counts_text(stats)), Text("  " + _cost_text(stats)))


def resolve_mode(mode: ProgressMode, stream: TextIO | None = None) -> ProgressMode:
    """``auto`` becomes ``live`` when ``stream`` (stderr) is a terminal, else ``plain``."""
    if mode not in PROGRESS_MODES:
        raise ValueError(f"progress mode must be one of {PROGRESS_MODES}, got {mode!r}")
    if mode != "auto":
        return mode
    target = stream if stream is not None else sys.stderr
    isatty = getattr(target, "isatty", None)
    return "live" if isatty is not None and isatty() else "plain"


class ProgressReporter:
    """Shows progress of one job until closed; see ``progress()``.

    ``run()`` loops until cancelled (start it in a task group), or use the
    reporter as an async context manager, which does that for you. On the way
    out the last state is shown once more, so the final counts are always on
    screen (live) or in the log (plain).
    """

    def __init__(
        self,
        stats_fn: Callable[[], PipelineStatistics],
        *,
        mode: ProgressMode = "auto",
        interval: float | None = None,
        console: Console | None = None,
        stream: TextIO | None = None,
        log: logging.Logger | None = None,
        sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
    ) -> None:
        self._stats_fn = stats_fn
        self._stream = stream
        self.mode: ProgressMode = "live" if console is not None and mode == "auto" else mode
        self.mode = resolve_mode(self.mode, stream)
        default = DEFAULT_LIVE_INTERVAL if self.mode == "live" else DEFAULT_PLAIN_INTERVAL
        self.interval = default if interval is None else interval
        if self.interval <= 0:
            raise ValueError(f"interval must be > 0, got {self.interval}")
        self._console = console
        self._log = log if log is not None else logger
        self._sleep = sleep
        self._live: Live | None = None
        self._last_line: str | None = None
        self._idle_ticks = 0
        self._closed = False
        self._task_group: anyio.abc.TaskGroup | None = None
        #: lines logged in plain mode (for callers that count them)
        self.lines_logged = 0

    @property
    def console(self) -> Console | None:
        """The rich console of the live display (created when the display starts)."""
        return self._console

    async def run(self) -> None:
        """Refresh every ``interval`` until cancelled, then show the last state."""
        if self.mode == "off":
            return
        self._open()
        try:
            while True:
                self.tick()
                await self._sleep(self.interval)
        finally:
            self.close()

    def tick(self) -> None:
        """Show the current state once."""
        stats = self._stats_fn()
        if self._live is not None:
            self._live.update(render_live(stats), refresh=True)
        elif self.mode == "plain":
            self._log_line(stats, force=False)

    def close(self) -> None:
        """Show the final state and release the terminal; idempotent."""
        if self.mode == "off" or self._closed:
            return
        self._closed = True
        stats = self._stats_fn()
        if self._live is not None:
            self._live.update(render_live(stats), refresh=True)
            self._live.stop()
            self._live = None
        elif self.mode == "plain":
            self._log_line(stats, force=True)

    def _open(self) -> None:
        if self.mode != "live" or self._live is not None:
            return
        from rich.console import Console
        from rich.live import Live

        if self._console is None:
            self._console = Console(
                file=self._stream if self._stream is not None else sys.stderr,
                force_terminal=True,
            )
        self._live = Live(
            render_live(self._stats_fn()),
            console=self._console,
            auto_refresh=False,
            redirect_stdout=False,
        )
        self._live.start()

    def _log_line(self, stats: PipelineStatistics, *, force: bool) -> None:
        key = _counts_text(stats) + _cost_text(stats)
        if not force and key == self._last_line and self._idle_ticks < _HEARTBEAT_INTERVALS:
            self._idle_ticks += 1
            return
        self._idle_ticks = 0
        self._last_line = key
        self.lines_logged += 1
        fields = progress_fields(stats)
        fields[FIELDS_IN_MESSAGE] = True
        self._log.info("progress: %s", format_progress_line(stats), extra=fields)

    async def __aenter__(self) -> ProgressReporter:
        if self.mode == "off":
            return self
        self._task_group = anyio.create_task_group()
        await self._task_group.__aenter__()
        self._task_group.start_soon(self.run)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        group, self._task_group = self._task_group, None
        if group is None:
            return None
        group.cancel_scope.cancel()
        suppressed = await group.__aexit__(exc_type, exc, tb)
        self.close()
        return suppressed


def progress(
    stats_fn: Callable[[], PipelineStatistics],
    *,
    mode: ProgressMode = "auto",
    interval: float | None = None,
    console: Console | None = None,
    stream: TextIO | None = None,
    sleep: Callable[[float], Awaitable[object]] = anyio.sleep,
) -> ProgressReporter:
    """Show the progress of a job while the ``async with`` body runs.

    ``mode``: ``live`` (a rich display on ``console`` / ``stream``, stderr by
    default), ``plain`` (a log line on ``"pipeline.progress"`` every ``interval``
    seconds, with the counts as structured fields), ``off``, or ``auto``: live
    when the stream is a terminal, else plain. ``sleep`` is injectable for tests.
    """
    return ProgressReporter(
        stats_fn, mode=mode, interval=interval, console=console, stream=stream, sleep=sleep
    )


class RunnablePipeline(Protocol):
    """What ``run_with_progress`` needs of a pipeline."""

    async def run(self) -> object:
        """Run the job to its end (or until stopped)."""
        ...

    def statistics(self) -> PipelineStatistics:
        """A snapshot of the job's progress."""
        ...


async def run_with_progress(
    pipeline: RunnablePipeline,
    *,
    progress: ProgressMode = "auto",
    quiet: bool = False,
    log_format: LogFormat = "text",
    output: str | None = None,
    rejects: str | None = None,
    stream: TextIO | None = None,
    console: Console | None = None,
    interval: float | None = None,
) -> PipelineStatistics:
    """Run ``pipeline`` showing its progress, then report the summary; return the
    final statistics. This is what ``pipeline run`` and ``pipeline worker`` do
    around a pipeline, for services and scripts that want the same.

    **Parameters:**

    * **pipeline** - anything with ``run()`` and ``statistics()``, e.g. a ``Pipeline``.
    * **progress** - the display while it runs: ``live``, ``plain``, ``off`` or
      ``auto`` (live on a terminal, else plain; plain with ``log_format="json"``).
    * **quiet** - no progress and no summary at all.
    * **log_format** - ``json``: the summary is one structured log record on the
      ``pipeline`` logger instead of printed text.
    * **output** / **rejects** - the paths the summary names (default: the
      pipeline's ``output_path`` / ``rejects_path`` where it has them).
    * **stream** - where the display and the summary go (default: stderr);
      **console** - a ``rich`` console for the live display instead.
    * **interval** - seconds between refreshes (default: the mode's own).

    An error from the run propagates after the display has shown its last state.
    """
    mode = _display_mode(progress, quiet=quiet, log_format=log_format)
    target = stream if stream is not None else sys.stderr
    reporter = ProgressReporter(
        pipeline.statistics, mode=mode, interval=interval, console=console, stream=target
    )
    async with reporter:
        await pipeline.run()
    stats = pipeline.statistics()
    output = output if output is not None else _path_of(pipeline, "output")
    rejects = rejects if rejects is not None else _path_of(pipeline, "rejects")
    if mode == "off":
        return stats
    if log_format == "json":
        log_summary(stats, output=output, rejects=rejects)
    elif reporter.mode == "live":
        print_summary(stats, output=output, rejects=rejects, console=reporter.console)
    else:
        print_summary(stats, output=output, rejects=rejects, stream=target)
    return stats


def _display_mode(mode: ProgressMode, *, quiet: bool, log_format: LogFormat) -> ProgressMode:
    """``off`` when quiet; with JSON logs the live display gives way to plain (JSON) lines."""
    if quiet:
        return "off"
    if mode == "auto" and log_format == "json":
        return "plain"
    return mode


def _path_of(pipeline: object, name: str) -> str | None:
    """The pipeline's ``<name>_path`` (what it really writes), if it has one."""
    value = getattr(pipeline, f"{name}_path", None)
    return None if value is None else str(value)
