"""What the ``run`` and ``worker`` commands share: the ``--quiet``,
``--log-format`` and ``--progress`` options, the event loop they run on, and
running a pipeline with progress on the way and the summary at the end.

``run_with_progress`` works on anything shaped like a ``Pipeline``
(``run()``, ``statistics()``), so services can use it too.
"""

from __future__ import annotations

import importlib.util
import logging
import sys
from typing import TYPE_CHECKING, Protocol, TextIO

from ._config import DEFAULT_API_KEY_ENV
from ._logging import LOG_FORMATS, configure_logging
from ._progress import PROGRESS_MODES, ProgressMode, progress
from ._summary import outcome_counts, print_summary

if TYPE_CHECKING:
    import argparse

    from rich.console import Console

    from ._stats import PipelineStatistics

__all__ = (
    "RunnablePipeline",
    "add_ux_arguments",
    "announce",
    "event_loop_options",
    "log_summary",
    "progress_mode_from_args",
    "run_with_progress",
    "setup_logging_from_args",
)

logger = logging.getLogger("pipeline")


class RunnablePipeline(Protocol):
    """What the progress helpers need of a pipeline."""

    async def run(self) -> object:
        """Run the job to its end (or until stopped)."""
        ...

    def statistics(self) -> PipelineStatistics:
        """A snapshot of the job's progress."""
        ...


def event_loop_options() -> dict[str, object]:
    """``anyio.run``'s backend options for the commands: uvloop's event loop where it
    is installed (a dependency except on Windows and PyPy), asyncio's own elsewhere.
    It takes about a twentieth off the CPU of a large job (event loop and socket
    transports in C); a service embedding a pipeline keeps its own loop."""
    return {"use_uvloop": True} if importlib.util.find_spec("uvloop") else {}


def announce(message: str) -> None:
    """Pass as ``Pipeline(announce=...)``: notices (e.g. "running on the local
    emulator") go through logging, so ``--quiet`` hides them and ``--log-format
    json`` keeps stderr all JSON."""
    logger.info(message.removeprefix("pipeline: "))


def add_ux_arguments(parser: argparse.ArgumentParser) -> None:
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


def setup_logging_from_args(args: argparse.Namespace, *, stream: TextIO | None = None) -> None:
    """Install the ``pipeline`` log handler the options ask for (masking the key
    named by ``--api-key-env`` when the command has that option)."""
    configure_logging(
        log_format=getattr(args, "log_format", "text"),
        level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO,
        stream=stream,
        api_key_env=getattr(args, "api_key_env", None) or DEFAULT_API_KEY_ENV,
    )


def progress_mode_from_args(args: argparse.Namespace) -> ProgressMode:
    """``off`` when quiet; otherwise ``--progress`` (``auto`` by default). With
    ``--log-format json`` the live display gives way to plain (JSON) lines."""
    if getattr(args, "quiet", False):
        return "off"
    mode: ProgressMode = getattr(args, "progress", "auto")
    if mode == "auto" and getattr(args, "log_format", "text") == "json":
        return "plain"
    return mode


def log_summary(stats: PipelineStatistics, *, output: str | None, rejects: str | None) -> None:
    """The summary as one structured log record (``--log-format json``)."""
    outcomes, errors = outcome_counts(stats)
    logger.info(
        "job %s: %d written, %d rejected, $%.4f",
        "finished" if stats.finished else "stopped",
        stats.written,
        stats.rejected,
        stats.actual_cost_usd,
        extra={
            "outcomes": outcomes,
            "errors": errors,
            "usage": {
                model: {"input_tokens": u.input_tokens, "output_tokens": u.output_tokens}
                for model, u in stats.usage.items()
            },
            "estimated_cost_usd": stats.estimated_cost_usd,
            "actual_cost_usd": stats.actual_cost_usd,
            "unpriced_models": list(stats.unpriced_models),
            "elapsed_seconds": round(stats.elapsed_seconds, 3),
            "output": output,
            "rejects": rejects,
            "stopped_reason": stats.stopped_reason,
        },
    )


async def run_with_progress(
    pipeline: RunnablePipeline,
    *,
    args: argparse.Namespace,
    output: str | None = None,
    rejects: str | None = None,
    stream: TextIO | None = None,
    console: Console | None = None,
    interval: float | None = None,
) -> PipelineStatistics:
    """Run ``pipeline`` showing progress as ``args`` ask (``--quiet``,
    ``--progress``, ``--log-format``), then print the summary; return the final
    statistics. ``output`` / ``rejects`` (named in the summary) default to
    ``args.output`` / ``args.rejects``. An error from the run propagates after
    the progress display has shown its last state."""
    mode = progress_mode_from_args(args)
    target = stream if stream is not None else sys.stderr
    reporter = progress(
        pipeline.statistics, mode=mode, interval=interval, console=console, stream=target
    )
    async with reporter:
        await pipeline.run()
    stats = pipeline.statistics()
    output = output if output is not None else _path_of(pipeline, args, "output")
    rejects = rejects if rejects is not None else _path_of(pipeline, args, "rejects")
    if mode == "off":
        return stats
    if getattr(args, "log_format", "text") == "json":
        log_summary(stats, output=output, rejects=rejects)
    elif reporter.mode == "live":
        print_summary(stats, output=output, rejects=rejects, console=reporter.console)
    else:
        print_summary(stats, output=output, rejects=rejects, stream=target)
    return stats


def _path_of(pipeline: object, args: argparse.Namespace, name: str) -> str | None:
    """The pipeline's ``<name>_path`` (what it really writes), else ``args.<name>``."""
    value = getattr(pipeline, f"{name}_path", None) or getattr(args, name, None)
    return None if value is None else str(value)
