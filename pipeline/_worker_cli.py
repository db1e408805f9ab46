"""``python -m pipeline worker DEFINITION.py``: a pipeline definition as a
long-lived worker (see ``pipeline._worker`` for the definition convention)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from ._ux import add_ux_arguments, event_loop_options, setup_logging_from_args

if TYPE_CHECKING:
    import argparse

__all__ = ("add_parser", "main")

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
"""


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
    add_ux_arguments(parser)
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Run the worker; the process exit code."""
    import anyio

    from ._errors import PipelineError, UsageError
    from ._worker import run_definition

    setup_logging_from_args(args)
    try:
        code: int = anyio.run(run_definition, args, backend_options=event_loop_options())
    except UsageError as exc:  # the definition: missing, wrong, or raising
        logger.error("worker failed: %s", exc)
        return 2
    except PipelineError as exc:
        logger.error("worker failed: %s", exc)
        return 1
    except KeyboardInterrupt:  # a signal before the handlers were installed
        return 130
    return code
