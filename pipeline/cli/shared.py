"""What the commands share: exit codes, the ``--quiet``, ``--log-format`` and
``--progress`` options, the event loop they run on, and the one signal handler of
``run`` and ``worker`` (as uvicorn's ``Server.capture_signals``): the first
SIGTERM / SIGINT asks the pipeline to stop gracefully, a second cancels the run
at once (the state on disk stays consistent) and the exit code is 128 + signal.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import logging
import signal
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import anyio

from .._config import DEFAULT_API_KEY_ENV, LOW_MEMORY_ABOVE_BYTES
from .._logging import LOG_FORMATS, configure_logging
from .._monitor import DEFAULT_MONITOR_HOST
from .._progress import PROGRESS_MODES, RunnablePipeline, run_with_progress

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Callable

    from .._stats import PipelineStatistics

__all__ = (
    "EXIT_CANCELED",
    "EXIT_FAILED",
    "EXIT_NOT_FINISHED",
    "EXIT_OK",
    "EXIT_USAGE",
    "SIGNALS",
    "SignalNotice",
    "Signals",
    "Stoppable",
    "add_cancel_options",
    "add_memory_options",
    "add_monitor_options",
    "add_output_options",
    "event_loop_options",
    "exit_code_of_signal",
    "run_until_signalled",
    "setup_logging",
)

#: The job finished (or, for a worker, stopped gracefully).
EXIT_OK = 0
#: It failed (an API, state file or file system error), with a one-line reason.
EXIT_FAILED = 1
#: Bad options or input, said in one line (argparse uses 2 for its own errors too).
EXIT_USAGE = 2
#: ``run`` ended unfinished but resumable (the budget, a graceful stop).
EXIT_NOT_FINISHED = 3
#: The job is canceled (``pipeline cancel``, ``--budget-action cancel``), or a re-run
#: found it canceled: ``run`` / ``worker`` send nothing more until ``--resume-canceled``.
EXIT_CANCELED = 4

#: The signals that stop ``run`` and ``worker``: the first gracefully, a second at once.
SIGNALS = (signal.SIGTERM, signal.SIGINT)


def exit_code_of_signal(signum: int) -> int:
    """The exit code of a process a signal cut short (as a shell reports it)."""
    return 128 + signum


def event_loop_options() -> dict[str, object]:
    """``anyio.run``'s backend options for the commands: uvloop's event loop where it
    is installed (a dependency except on Windows and PyPy), asyncio's own elsewhere.
    It takes about a twentieth off the CPU of a large job (event loop and socket
    transports in C); a service embedding a pipeline keeps its own loop."""
    return {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}


def add_output_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--quiet``, ``--log-format`` and ``--progress`` to a sub-command."""
    group = parser.add_argument_group("output")
    group.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        help="no progress and no summary; log warnings and errors only",
    )
    group.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default="text",
        help="log lines as text for people, or one JSON object per line for log "
        "collectors (default: text)",
    )
    group.add_argument(
        "--progress",
        choices=PROGRESS_MODES,
        default="auto",
        help="live: a display redrawn in place; plain: a log line every 10 s; off; "
        "auto (default): live when stderr is a terminal, else plain",
    )


def add_cancel_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--resume-canceled`` and ``--budget-action`` to ``run`` and ``worker``."""
    group = parser.add_argument_group("cancel")
    group.add_argument(
        "--resume-canceled",
        action="store_true",
        help="run a canceled job again: send its canceled requests again, on purpose, and "
        "go on (without it, a canceled job sends nothing and exits 4)",
    )
    group.add_argument(
        "--budget-action",
        choices=("stop", "cancel"),
        default=None,
        help="at --budget-usd: stop submitting (default; resumable, exit 3) or cancel the "
        "job, its batches in flight at the service too (exit 4)",
    )


def add_memory_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--low-memory`` / ``--no-low-memory`` (``PipelineConfig.low_memory``) to
    ``run`` and ``worker``; not given: the automatic choice (``args.low_memory`` None)."""
    group = parser.add_argument_group("memory")
    group.add_argument(
        "--low-memory",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="hold one batch at a time, its requests' bytes left in the input file until "
        "it is sent: the next batch is packed only once the last is sent (a batch of "
        "64 MB: about 140 MB peak instead of 300). Default: on when --max-batch-bytes is "
        f"above {LOW_MEMORY_ABOVE_BYTES:,}",
    )


def add_monitor_options(parser: argparse.ArgumentParser) -> None:
    """Add ``--metrics-port`` and ``--metrics-host`` (metrics, health, the job page)."""
    group = parser.add_argument_group("operating")
    group.add_argument(
        "--metrics-port",
        type=int,
        metavar="PORT",
        help="serve Prometheus metrics (/metrics), health checks (/healthz, /readyz) and "
        "the live job page (/) on PORT while the job runs (metrics need "
        "pipeline[metrics])",
    )
    group.add_argument(
        "--metrics-host",
        default=DEFAULT_MONITOR_HOST,
        metavar="HOST",
        help=f"the address --metrics-port listens on (default: {DEFAULT_MONITOR_HOST}; "
        "0.0.0.0 for every interface)",
    )


def _monitor_serving(
    pipeline: Stoppable, args: argparse.Namespace
) -> contextlib.AbstractAsyncContextManager[object]:
    port = getattr(args, "metrics_port", None)
    if port is None:
        return contextlib.nullcontext()
    from .._monitor import serve_job

    return serve_job(pipeline, host=args.metrics_host, port=port)  # type: ignore[arg-type]


def setup_logging(args: argparse.Namespace) -> None:
    """Install the ``pipeline`` log handler the output options ask for (masking the
    key named by ``--api-key-env`` when the command has that option)."""
    configure_logging(
        log_format=args.log_format,
        level=logging.WARNING if args.quiet else logging.INFO,
        api_key_env=getattr(args, "api_key_env", None) or DEFAULT_API_KEY_ENV,
    )


class Stoppable(RunnablePipeline, Protocol):
    """What ``run`` and ``worker`` need of a pipeline: run it, watch it, stop it."""

    def stop(self, reason: str = ...) -> None:
        """Stop reading input, finish or spool what is in hand, and end ``run()``."""
        ...


@dataclass(frozen=True)
class SignalNotice:
    """What a command says when a signal arrives, each called with the signal's
    name: ``first`` on the graceful stop, ``again`` on the second signal."""

    first: Callable[[str], None]
    again: Callable[[str], None] = lambda name: None


@dataclass
class Signals:
    """The signals a run received, in order."""

    received: list[int] = field(default_factory=list)

    @property
    def exit_code(self) -> int | None:
        """128 + the last signal when a second signal cut the run short, else None."""
        return exit_code_of_signal(self.received[-1]) if len(self.received) > 1 else None


async def run_until_signalled(
    pipeline: Stoppable, args: argparse.Namespace, *, notice: SignalNotice, signals: Signals
) -> PipelineStatistics | None:
    """Run ``pipeline`` with progress and the summary as the output options ask, the
    signal handler installed; its final statistics, or None when a second signal
    cancelled it (``signals`` holds what arrived)."""
    result: PipelineStatistics | None = None
    async with _monitor_serving(pipeline, args):
        with anyio.open_signal_receiver(*SIGNALS) as received:
            async with anyio.create_task_group() as tg:
                scope = anyio.CancelScope()
                tg.start_soon(_watch, received, pipeline, scope, notice, signals)
                with scope:
                    result = await run_with_progress(
                        pipeline,
                        progress=args.progress,
                        quiet=args.quiet,
                        log_format=args.log_format,
                    )
                tg.cancel_scope.cancel()
    return result


async def _watch(
    received: AsyncIterator[int],
    pipeline: Stoppable,
    scope: anyio.CancelScope,
    notice: SignalNotice,
    signals: Signals,
) -> None:
    """The first signal stops ``pipeline``; a second cancels ``scope``."""
    async for signum in received:
        name = signal.Signals(signum).name
        signals.received.append(signum)
        if len(signals.received) == 1:
            notice.first(name)
            pipeline.stop(f"signal {name}")
            continue
        notice.again(name)
        scope.cancel()
        return
