"""``python -m pipeline cancel --state PATH``: cancel a job, whether a worker runs it
or not (``pipeline._cancel_job`` says how).

Exit status: 0 the job is canceled (by this command, by the worker running it, or
before), or it had finished (nothing to cancel), or, for a job whose output is a
callback, the cancel is recorded for its next run; 1 the cancel failed (an API or
state file error; the intent stays recorded, so running the command again, or the
job, completes it); 2 bad options (no such state file, an ``--api-key-env``
variable that is not set); 128 + signal when a signal cut it short (the intent
stays recorded too).
"""

from __future__ import annotations

import logging
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

from .._config import DEFAULT_API_KEY_ENV
from .shared import EXIT_FAILED, EXIT_OK, EXIT_USAGE, event_loop_options, exit_code_of_signal

if TYPE_CHECKING:
    import argparse

    from .._cancel_job import CancelOutcome

__all__ = ("add_parser", "describe", "main")

_log = logging.getLogger("pipeline")


def add_parser(subparsers: Any) -> None:
    """Register ``cancel``."""
    parser = subparsers.add_parser(
        "cancel",
        help="cancel a job: its batches at the service too, and mark it canceled",
        description=(
            "Cancel the job of a state file: submit nothing more, cancel every batch of "
            "the job in flight at the service, write what they finished (their canceled "
            "requests are recorded as canceled, not retried) and mark the job canceled, "
            "so that a re-run says so instead of resubmitting (run it with "
            "--resume-canceled to send the canceled requests again). When a worker runs "
            "the job, the cancel is recorded in the state file and the worker does it "
            "(it then exits 4); this command waits for it."
        ),
        epilog=(
            "Exit status: 0 the job is canceled (or had finished: nothing to cancel); 1 it "
            "failed (the cancel stays recorded: run the command again); 2 bad options; "
            "128 + signal when a signal cut it short (the cancel stays recorded)."
        ),
    )
    parser.add_argument("--state", required=True, metavar="PATH", help="the job's state file")
    api = parser.add_argument_group("service")
    api.add_argument(
        "--base-url",
        metavar="URL",
        help="the API's base URL, as the job used (default: ANTHROPIC_BASE_URL if set, else "
        "the Anthropic API when a key is set, else the job's embedded emulator)",
    )
    api.add_argument(
        "--api-key-env",
        default=DEFAULT_API_KEY_ENV,
        metavar="NAME",
        help=f"environment variable holding the API key (default: {DEFAULT_API_KEY_ENV})",
    )
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings and errors only")
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines as text, or one JSON object per line (default: text)",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Cancel the job; the exit status."""
    import anyio

    from .._cancel_job import cancel_job
    from .._errors import LedgerError, PipelineError, UsageError
    from .._logging import announce
    from .shared import setup_logging

    setup_logging(args)
    api_key = os.environ.get(args.api_key_env) or None
    if api_key is None and args.api_key_env != DEFAULT_API_KEY_ENV:
        _report(args, logging.ERROR, f"{args.api_key_env} is not set (--api-key-env)")
        return EXIT_USAGE
    if not os.path.isfile(args.state):
        _report(args, logging.ERROR, f"no state file at {args.state}")
        return EXIT_USAGE

    async def cancel() -> CancelOutcome:
        return await cancel_job(
            args.state, api_key_env=args.api_key_env, base_url=args.base_url, announce=announce
        )

    try:
        outcome = anyio.run(cancel, backend_options=event_loop_options())
    except KeyboardInterrupt:
        _report(args, logging.WARNING, _INTERRUPTED)
        return exit_code_of_signal(signal.SIGINT)
    except LedgerError as exc:
        _report(args, logging.ERROR, f"failed: {_one_line(exc)}")
        return EXIT_FAILED
    except (UsageError, ValueError) as exc:  # e.g. an unusable key or base URL
        _report(args, logging.ERROR, _one_line(exc))
        return EXIT_USAGE
    except (PipelineError, OSError) as exc:
        _report(args, logging.ERROR, f"failed: {_one_line(exc)}; {_RECORDED}")
        return EXIT_FAILED
    _report(args, logging.WARNING if outcome.how == "recorded" else logging.INFO, describe(outcome))
    return EXIT_OK


_RECORDED = "the cancel stays recorded: run `pipeline cancel` again (or the job) to complete it"
_INTERRUPTED = f"interrupted; {_RECORDED}"


def describe(outcome: CancelOutcome) -> str:
    """One line for a person: what the cancel did and left."""
    status = outcome.status
    if outcome.how == "finished":
        return "the job already finished; nothing to cancel"
    if outcome.how == "recorded":
        return (
            "the cancel is recorded; this job writes its results to a callback, not a file, "
            "so its next run (your service's worker) cancels its batches and collects them"
        )
    who = {"canceled": "job canceled", "by-worker": "job canceled by its worker"}.get(
        outcome.how, "the job was canceled already"
    )
    line = (
        f"{who}: {status.canceled:,} request(s) canceled, {status.written:,} result(s) "
        f"written, {status.spooled:,} waiting to be re-sent"
    )
    stats = outcome.statistics
    if stats is not None and stats.outcomes:
        counts = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.outcomes.items()))
        line += f" (collected now: {counts})"
    return line + "; re-run the job with --resume-canceled to send the canceled requests again"


def _report(args: argparse.Namespace, level: int, text: str) -> None:
    """The command's last word, on stderr (a JSON log record with ``--log-format
    json``), any API key masked."""
    from .._logging import env_secrets, redact

    text = redact(text, env_secrets(args.api_key_env))
    if args.log_format == "json":
        _log.log(level, "pipeline cancel: %s", text)
    elif level >= logging.WARNING or not args.quiet:
        print(f"pipeline cancel: {text}", file=sys.stderr)


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
