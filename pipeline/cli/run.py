"""``python -m pipeline run``: a JSONL file of batch requests to a JSONL file of results.

With ``ANTHROPIC_API_KEY`` (or the variable ``--api-key-env`` names) set, it talks
to the Message Batches API (or ``--base-url``, else ``ANTHROPIC_BASE_URL``); with
neither a key nor a base URL it starts the local emulator in-process and says so on
stderr.

Exit status: 0 when the job finished (errored results are outcomes, not failures);
3 when it ended unfinished but resumable (the budget was reached, or a SIGTERM /
SIGINT stopped it gracefully), with a one-line reason; 4 when the job is canceled
(``pipeline cancel``, ``--budget-action cancel``) or a re-run found it canceled; 1 with a one-line reason
when it failed (an API, state file or file system error); 2 for bad options or input
(see the README); 128 + signal number when
a second signal cut it short (the state on disk stays consistent: re-running the
command resumes). With ``--log-format json`` those lines are JSON log records too.
"""

from __future__ import annotations

import argparse
import functools
import logging
import math
import os
import signal
import sys
from typing import TYPE_CHECKING, Any

import anyio

from .._config import (
    DEFAULT_API_KEY_ENV,
    DEFAULT_DRY_RUN_RATE,
    DEFAULT_LINGER_SECONDS,
    DEFAULT_MAX_ATTEMPTS,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_REQUESTS,
    DEFAULT_MAX_IN_FLIGHT,
    DEFAULT_POLL_INTERVAL,
    PipelineConfig,
)
from .shared import (
    EXIT_CANCELED,
    EXIT_FAILED,
    EXIT_NOT_FINISHED,
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
    from collections.abc import Callable

    from .._pipeline import Pipeline
    from .._stats import PipelineStatistics

__all__ = ("add_parser", "build_config", "format_summary", "run_command")

_log = logging.getLogger("pipeline")


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register ``run`` and its options; ``func`` runs the job."""
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "run",
        help="run a job: a JSONL file of batch requests to a JSONL file of results",
        description=(
            'Send every request of INPUT (one {"custom_id": ..., "params": {...}} per line) '
            "through the Message Batches API and write one result line per accepted request "
            "to --output. With no API key and no --base-url, runs on the local emulator. "
            "Re-running the same command resumes an interrupted job."
        ),
        epilog=(
            "Exit status: 0 the job finished; 3 it ended unfinished but resumable (the "
            "budget was reached, or a first SIGTERM/SIGINT stopped it gracefully), with the "
            "reason on stderr; 1 it failed, with a one-line reason; 2 bad options, a "
            "--api-key-env variable that is not set, or an output a new job would "
            "overwrite without --overwrite; 4 the job is canceled (by `pipeline cancel` or "
            "--budget-action cancel), or a re-run found it canceled (--resume-canceled sends "
            "its canceled requests again); 128 + signal when a second signal cut it short."
        ),
    )
    parser.add_argument("input", metavar="INPUT.jsonl", help="the batch requests, one per line")
    parser.add_argument(
        "--output",
        "-o",
        required=True,
        metavar="RESULTS.jsonl",
        help="where results go, one line per accepted request (the service's result format)",
    )
    parser.add_argument(
        "--rejects",
        metavar="REJECTS.jsonl",
        help="where inputs that cannot be sent go, with line number, custom_id and reason "
        "(default: RESULTS.rejects.jsonl next to the output)",
    )
    parser.add_argument(
        "--state",
        metavar="PATH",
        help="the job's state file, for resuming (default: RESULTS.jsonl.state next to the output)",
    )
    parser.add_argument(
        "--overwrite",
        action="store_true",
        help="let a new job (no state file yet) replace a non-empty output or rejects file "
        "(without it, the run refuses, exit 2)",
    )
    api = parser.add_argument_group("service")
    api.add_argument(
        "--base-url",
        metavar="URL",
        help="the API's base URL (default: ANTHROPIC_BASE_URL if set, else the Anthropic "
        "API when a key is set, else the embedded emulator)",
    )
    api.add_argument(
        "--api-key-env",
        default=DEFAULT_API_KEY_ENV,
        metavar="NAME",
        help=f"environment variable holding the API key (default: {DEFAULT_API_KEY_ENV}; "
        "a variable named here must be set)",
    )
    api.add_argument(
        "--models",
        type=_model_list,
        metavar="NAME[,NAME...]",
        help="model names the local check accepts, comma-separated (default: any name; "
        "the service, and the dry run, decide)",
    )
    api.add_argument(
        "--allow-field",
        type=_field_list,
        action="append",
        default=[],
        metavar="NAME[,NAME...]",
        help="top-level params the local check lets through unchecked, for fields the API "
        "added after this version of pipeline (repeatable; the dry run still sends them)",
    )
    tune = parser.add_argument_group("batching")
    tune.add_argument(
        "--max-batch-requests",
        type=int,
        default=None,
        metavar="N",
        help=f"requests per batch at most (default: {DEFAULT_MAX_BATCH_REQUESTS:,}, or "
        "--max-in-flight when that is lower)",
    )
    tune.add_argument(
        "--max-batch-bytes",
        type=int,
        default=DEFAULT_MAX_BATCH_BYTES,
        metavar="BYTES",
        help=f"size of a batch's create body at most (default: {DEFAULT_MAX_BATCH_BYTES:,})",
    )
    tune.add_argument(
        "--max-in-flight",
        type=int,
        default=DEFAULT_MAX_IN_FLIGHT,
        metavar="N",
        help="requests at the service at once (submitted, results not yet collected); "
        f"the queue limit of your tier (default: {DEFAULT_MAX_IN_FLIGHT:,})",
    )
    tune.add_argument(
        "--linger-seconds",
        type=float,
        default=DEFAULT_LINGER_SECONDS,
        metavar="S",
        help="how long a partial batch waits for more requests before it is sent anyway "
        f"(default: {DEFAULT_LINGER_SECONDS})",
    )
    tune.add_argument(
        "--max-attempts",
        type=int,
        default=DEFAULT_MAX_ATTEMPTS,
        metavar="N",
        help="submissions per request, the first included, for retryable errors "
        f"(api_error, overloaded_error) and expiries (default: {DEFAULT_MAX_ATTEMPTS})",
    )
    tune.add_argument(
        "--poll-interval",
        type=float,
        default=DEFAULT_POLL_INTERVAL,
        metavar="S",
        help="the floor of the adaptive poll interval, in seconds "
        f"(default: {DEFAULT_POLL_INTERVAL})",
    )
    tune.add_argument(
        "--canceled",
        choices=("final", "retry"),
        default="final",
        help="canceled results: write them as they are (final, default) or send them again",
    )
    tune.add_argument(
        "--delete-ended",
        action="store_true",
        help="delete each batch at the service once its results are durably written",
    )
    check = parser.add_argument_group("checks before paying")
    check.add_argument(
        "--dry-run",
        choices=("off", "count-tokens", "messages"),
        default="count-tokens",
        help="before submitting a new request shape, try samples of it: count-tokens (free, "
        "default), messages (a real tiny call), or off",
    )
    check.add_argument(
        "--dry-run-samples",
        type=int,
        default=1,
        metavar="N",
        help="samples tried per request shape (default: 1)",
    )
    check.add_argument(
        "--dry-run-policy",
        choices=("reject-shape", "continue", "abort"),
        default="reject-shape",
        help="when a sample fails: reject that shape's requests (default), continue anyway, "
        "or abort the job",
    )
    check.add_argument(
        "--dry-run-rate",
        type=float,
        default=DEFAULT_DRY_RUN_RATE,
        metavar="PER_S",
        help=f"dry-run calls per second at most (default: {DEFAULT_DRY_RUN_RATE:g})",
    )
    check.add_argument(
        "--budget-usd",
        type=float,
        metavar="USD",
        help="stop submitting before the estimated cost would pass this many dollars",
    )
    check.add_argument(
        "--price",
        type=_price,
        action="append",
        default=[],
        metavar="MODEL=IN,OUT",
        help="batch price of MODEL in USD per million input and output tokens, for a model "
        "the built-in table lacks or prices differently (repeatable), e.g. "
        "--price claude-x=1.5,7.5",
    )
    add_cancel_options(parser)
    add_memory_options(parser)
    add_output_options(parser)
    add_monitor_options(parser)
    parser.set_defaults(func=run_command)
    return parser


def build_config(args: argparse.Namespace) -> PipelineConfig:
    """The ``PipelineConfig`` the options ask for (``ValueError`` if inconsistent)."""
    batch_requests = args.max_batch_requests
    if batch_requests is None:  # not asked for: a lower in-flight cap lowers it too
        batch_requests = min(DEFAULT_MAX_BATCH_REQUESTS, max(1, args.max_in_flight))
    return PipelineConfig(
        max_batch_requests=batch_requests,
        max_batch_bytes=args.max_batch_bytes,
        max_in_flight=args.max_in_flight,
        linger_seconds=args.linger_seconds,
        max_attempts=args.max_attempts,
        poll_interval=args.poll_interval,
        max_poll_interval=max(args.poll_interval, PipelineConfig().max_poll_interval),
        canceled=args.canceled,
        dry_run=args.dry_run,
        dry_run_samples=args.dry_run_samples,
        dry_run_policy=args.dry_run_policy,
        dry_run_rate=args.dry_run_rate,
        budget_usd=args.budget_usd,
        budget_action=args.budget_action or "stop",
        delete_ended=args.delete_ended,
        low_memory=args.low_memory,
        models=args.models,
        allow_fields=frozenset().union(*args.allow_field),
        api_key_env=args.api_key_env,
    )


def _names(kind: str) -> Callable[[str], frozenset[str]]:
    """The parser of an option's comma-separated ``kind`` names; argparse prints the
    reason of a list with none."""

    def parse(text: str) -> frozenset[str]:
        names = frozenset(name.strip() for name in text.split(",") if name.strip())
        if not names:
            raise argparse.ArgumentTypeError(
                f"expected {kind} names separated by commas, got {text!r}"
            )
        return names

    return parse


_model_list = _names("model")
_field_list = _names("field")


def _price(text: str) -> tuple[str, tuple[float, float]]:
    """``--price MODEL=IN,OUT``: (model, (input, output)); argparse prints the reason."""
    model, sep, rates = text.partition("=")
    parts = rates.split(",")
    try:
        if not sep or not model.strip() or len(parts) != 2:
            raise ValueError
        price = (float(parts[0]), float(parts[1]))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected MODEL=INPUT,OUTPUT (USD per million tokens at batch price, e.g. "
            f"claude-x=1.5,7.5), got {text!r}"
        ) from None
    if not all(math.isfinite(p) and p >= 0 for p in price):
        raise argparse.ArgumentTypeError(f"prices must be finite and >= 0, got {text!r}")
    return model.strip(), price


def run_command(args: argparse.Namespace) -> int:
    """Run the job; the exit status."""
    from .._errors import PipelineError
    from .._logging import announce
    from .._pipeline import Pipeline
    from .._pricing import DEFAULT_PRICES

    setup_logging(args)
    api_key = os.environ.get(args.api_key_env) or None
    if api_key is None and args.api_key_env != DEFAULT_API_KEY_ENV:
        _report(args, logging.ERROR, f"{args.api_key_env} is not set (--api-key-env)")
        return EXIT_USAGE
    try:
        config = build_config(args)
        pipeline = Pipeline(
            args.input,
            args.output,
            args.rejects,
            config=config,  # the key: from config.api_key_env, checked as it is read
            base_url=args.base_url,
            state=args.state,
            announce=announce,
            overwrite=args.overwrite,
            resume_canceled=args.resume_canceled,
            prices=DEFAULT_PRICES.with_prices(dict(args.price)) if args.price else None,
        )
        # the run checks again; here a missing input or directory is said before
        # any progress line, as the usage error (exit 2) it is
        pipeline._check_before_start()
    except (ValueError, PipelineError, RuntimeError) as exc:
        _report(args, logging.ERROR, _one_line(exc))
        return EXIT_USAGE
    signals = Signals()
    try:
        try:
            run = functools.partial(
                run_until_signalled, pipeline, args, notice=_NOTICE, signals=signals
            )
            stats = anyio.run(run, backend_options=event_loop_options())
        except BaseExceptionGroup as group:
            raise _first_error(group) from None
    except (PipelineError, OSError) as exc:
        _report(args, logging.ERROR, f"failed: {_one_line(exc)}")
        return EXIT_FAILED
    except RuntimeError as exc:  # UsageError: e.g. an output a new job would wipe
        _report(args, logging.ERROR, _one_line(exc))
        return EXIT_USAGE
    if stats is None:
        _report(args, logging.ERROR, "interrupted; re-run the same command to resume")
        return signals.exit_code or exit_code_of_signal(signal.SIGINT)
    if stats.finished:
        return EXIT_OK
    if stats.canceled:
        _report(args, logging.WARNING, stats.stopped_reason or "the job is canceled")
        return EXIT_CANCELED
    reason = stats.stopped_reason or "the run ended with requests left"
    if "re-run" not in reason:
        reason += "; re-run the same command to resume"
    _report(args, logging.WARNING, f"not finished: {reason}")
    return EXIT_NOT_FINISHED


def _report(args: argparse.Namespace, level: int, text: str) -> None:
    """The command's last word: one ``pipeline run: ...`` line on stderr, or one
    JSON log record with ``--log-format json``; any API key masked either way."""
    from .._logging import env_secrets, redact

    text = redact(text, env_secrets(args.api_key_env))
    if getattr(args, "log_format", "text") == "json":
        _log.log(level, "pipeline run: %s", text)
    else:
        print(f"pipeline run: {text}", file=sys.stderr)


#: ``run``'s notice of the first signal (a second one cuts the run short silently).
_NOTICE = SignalNotice(
    first=lambda name: _log.warning("%s: stopping gracefully (again to exit at once)", name)
)


def _first_error(group: BaseExceptionGroup[BaseException]) -> BaseException:
    """The error a task group's exceptions stand for: the first leaf."""
    first: BaseException = group
    while isinstance(first, BaseExceptionGroup) and first.exceptions:
        first = first.exceptions[0]
    return first


def _one_line(exc: BaseException) -> str:
    if isinstance(exc, OSError) and exc.strerror:
        where = exc.filename if exc.filename is not None else ""
        return f"{exc.strerror}: {where}" if where else exc.strerror
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def format_summary(stats: PipelineStatistics, pipeline: Pipeline | None = None) -> str:
    """A short plain-text summary: counts per outcome, where output and rejects are."""
    if stats.finished and stats.read == 0 and stats.submitted == 0 and stats.written == 0:
        head = "pipeline: job finished"
    elif stats.stopped_reason:
        head = f"pipeline: stopped ({stats.stopped_reason}); re-run the same command to resume"
    elif stats.finished:
        head = f"pipeline: job finished in {stats.elapsed_seconds:.1f} s"
    else:
        head = "pipeline: job not finished"
    outcomes = ", ".join(f"{k} {v:,}" for k, v in sorted(stats.outcomes.items())) or "none"
    lines = [
        head,
        f"  read {stats.read:,} lines, rejected {stats.rejected:,}, submitted {stats.submitted:,} "
        f"in {stats.batches_submitted:,} batch(es), written {stats.written:,}",
        f"  outcomes: {outcomes}",
    ]
    if stats.actual_cost_usd:
        lines.append(f"  cost: ${stats.actual_cost_usd:.4f}")
    if pipeline is not None:
        if pipeline.output_path is not None:
            lines.append(f"  results: {pipeline.output_path}")
        if pipeline.rejects_path is not None:
            lines.append(f"  rejects: {pipeline.rejects_path}")
    return "\n".join(lines)
