"""``python -m pipeline worker DEFINITION.py``: a pipeline definition as a
long-lived worker (see ``pipeline._worker`` for the definition convention)."""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING

from .shared import (
    EXIT_CANCELED,
    EXIT_FAILED,
    EXIT_OK,
    EXIT_USAGE,
    SignalNotice,
    Signals,
    add_cancel_options,
    add_memory_options,
    add_monitor_options,
    add_output_options,
    event_loop_options,
    exit_code_of_signal,
    run_until_signalled,
    setup_logging,
)

if TYPE_CHECKING:
    import argparse

    from .._worker import StoppablePipeline

__all__ = ("add_parser", "main", "run_definition", "run_worker")

logger = logging.getLogger("pipeline.worker")

_DESCRIPTION = """\
Run the pipeline defined in a Python file until its source ends or the worker
is stopped. The file defines a module-level `pipeline` (a Pipeline) or a
function `make_pipeline()` (sync or async) returning one; the same file serves
a service (`await pipeline.run()`).

SIGTERM / SIGINT: stop reading input, submit or spool what is in hand, flush
the sinks, commit, exit 0 (batches at the service are collected on the next
start). A second signal exits at once (exit 128 + signal), still consistent
on disk.

`pipeline cancel --state S` from another shell cancels the job: the worker
notices it within a poll interval, cancels its batches at the service,
collects what they finished, marks the job canceled and exits 4. Started
again on a canceled job, it sends nothing and exits 4, unless
--resume-canceled.
"""

#: ``worker``'s notices of the first and the second signal.
_NOTICE = SignalNotice(
    first=lambda name: logger.info(
        "%s: stopping (send it again to exit at once)", name, extra={"signal": name}
    ),
    again=lambda name: logger.warning("%s again: exiting at once", name, extra={"signal": name}),
)


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``worker`` sub-command."""
    import argparse

    parser = subparsers.add_parser(
        "worker",
        help="run a Python pipeline definition as a long-lived worker",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("definition", metavar="DEFINITION.py", help="the pipeline definition file")
    add_cancel_options(parser)
    add_memory_options(parser)
    add_output_options(parser)
    add_monitor_options(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the worker; the process exit code."""
    import anyio

    from .._errors import PipelineError, UsageError

    setup_logging(args)
    try:
        code: int = anyio.run(run_definition, args, backend_options=event_loop_options())
    except UsageError as exc:  # the definition: missing, wrong, or raising
        logger.error("worker failed: %s", exc)
        return EXIT_USAGE
    except PipelineError as exc:
        logger.error("worker failed: %s", exc)
        return EXIT_FAILED
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return exit_code_of_signal(signal.SIGINT)
    return code


async def run_definition(args: argparse.Namespace) -> int:
    """Load ``args.definition`` and run its pipeline as a worker."""
    from .._worker import load_definition, resolve_pipeline

    namespace = load_definition(args.definition)
    pipeline = await resolve_pipeline(namespace, path=str(args.definition))
    _apply_cancel_options(pipeline, args)
    _apply_memory_option(pipeline, args)
    return await run_worker(pipeline, args=args)


def _apply_cancel_options(pipeline: object, args: argparse.Namespace) -> None:
    """``--resume-canceled`` and ``--budget-action`` on the definition's pipeline."""
    import msgspec

    if getattr(args, "resume_canceled", False) and hasattr(pipeline, "resume_canceled"):
        pipeline.resume_canceled = True
    action = getattr(args, "budget_action", None)
    config = getattr(pipeline, "config", None)
    if action is not None and config is not None:
        pipeline.config = msgspec.structs.replace(config, budget_action=action)  # type: ignore[attr-defined]


def _apply_memory_option(pipeline: object, args: argparse.Namespace) -> None:
    """``--low-memory`` / ``--no-low-memory`` on the definition's pipeline (not given:
    the definition's own ``low_memory``)."""
    import msgspec

    from .._errors import UsageError

    low_memory = getattr(args, "low_memory", None)
    config = getattr(pipeline, "config", None)
    if low_memory is None or config is None:
        return
    try:
        pipeline.config = msgspec.structs.replace(config, low_memory=low_memory)  # type: ignore[attr-defined]
    except ValueError as exc:  # the definition's config says otherwise (chunk_buffer)
        raise UsageError(f"--low-memory: {exc}") from exc


async def run_worker(pipeline: StoppablePipeline, *, args: argparse.Namespace) -> int:
    """Run ``pipeline`` until its source ends or a signal stops it; the exit code
    (0 after a clean end or a graceful stop, 128 + signal after a second signal)."""
    signals = Signals()
    await run_until_signalled(pipeline, args, notice=_NOTICE, signals=signals)
    if signals.exit_code is not None:
        return signals.exit_code
    stats = pipeline.statistics()
    if stats.canceled:
        logger.warning("worker done: %s", stats.stopped_reason, extra={"written": stats.written})
        return EXIT_CANCELED
    logger.info(
        "worker done: %d written, %d in flight left for the next start",
        stats.written,
        stats.in_flight,
        extra={"written": stats.written, "in_flight": stats.in_flight},
    )
    return EXIT_OK
