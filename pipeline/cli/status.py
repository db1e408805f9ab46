"""``python -m pipeline status --state PATH [--json | --serve PORT]``: a job's progress
from its state file; ``--serve`` serves the live job page, metrics and health checks
for it (no worker needed) until SIGINT / SIGTERM.

The state is read read-only and without the job's lock, so ``status`` works while
a worker runs. ``--adopt LOCAL_ID=BATCH_ID`` and ``--release LOCAL_ID`` settle a
batch create whose outcome reconciliation could not decide; they take the lock
(stop the worker first).
"""

from __future__ import annotations

import signal
import sys
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from .._errors import LedgerError, UsageError
from .._monitor import DEFAULT_MONITOR_HOST
from ..ledger import read_status
from ..ledger._files import check_state, damaged
from ..ledger._settle import settle_batches
from .shared import EXIT_FAILED, EXIT_OK, EXIT_USAGE

if TYPE_CHECKING:
    import argparse

    from ..ledger import BatchRecord, JobStatus

__all__ = ("add_parser", "format_status", "main", "status_json")


def add_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``status``."""
    parser = subparsers.add_parser(
        "status",
        help="show the progress of a job from its state file",
        description="Show a job's progress from its state file: requests read, rejected, "
        "submitted, ended and written, what is spooled for retry, and the batches in "
        "flight with their age. Safe to run while a worker runs.",
    )
    parser.add_argument("--state", required=True, metavar="PATH", help="the job's state file")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead")
    parser.add_argument(
        "--serve",
        type=int,
        metavar="PORT",
        help="serve the live job page (/), metrics (/metrics) and health checks "
        "(/healthz, /readyz) of this job on PORT, read from its state file, until "
        "Ctrl-C (no worker needed)",
    )
    parser.add_argument(
        "--metrics-host",
        default=DEFAULT_MONITOR_HOST,
        metavar="HOST",
        help=f"the address --serve listens on (default: {DEFAULT_MONITOR_HOST})",
    )
    parser.add_argument(
        "--adopt",
        metavar="LOCAL_ID=BATCH_ID",
        help="record that the unknown-outcome create LOCAL_ID made batch BATCH_ID "
        "(stop the worker first)",
    )
    parser.add_argument(
        "--release",
        metavar="LOCAL_ID",
        type=int,
        help="record that the unknown-outcome create LOCAL_ID made no batch: its requests "
        "are sent again on the next start (stop the worker first)",
    )
    parser.add_argument(
        "--abandon",
        metavar="LOCAL_ID",
        type=int,
        help="record that the created batch LOCAL_ID is gone at the service for good "
        "(deleted, or past its retention): the requests it has not written are sent "
        "again, and paid again, on the next start (stop the worker first)",
    )
    parser.add_argument(
        "--check",
        action="store_true",
        help="also run SQLite's full integrity check of the state file (reads all of "
        "it: seconds per million requests); exit 1 if it finds damage",
    )
    parser.set_defaults(func=main)


def main(args: argparse.Namespace) -> int:
    """Print the status; exit 0, 1 when ``--check`` finds damage, or 2 with a
    one-line reason."""
    try:
        if args.adopt or args.release is not None or args.abandon is not None:
            _settle(args)
        status = anyio.run(read_status, args.state)
        if args.serve is not None:
            anyio.run(_serve, args)
            return EXIT_OK
        problems = anyio.run(check_state, args.state) if args.check else []
    except (LedgerError, UsageError, ValueError) as exc:
        print(f"pipeline status: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if problems:
        print(f"pipeline status: {LedgerError(args.state, damaged(problems))}", file=sys.stderr)
        return EXIT_FAILED
    now = time.time()
    checked = args.check
    if args.json:
        out = status_json(status, now)
        if checked:
            out["integrity"] = "ok"
        sys.stdout.write(msgspec.json.encode(out).decode() + "\n")
    else:
        sys.stdout.write(format_status(status, now))
        if checked:
            sys.stdout.write("integrity  ok (SQLite's full check)\n")
    return EXIT_OK


async def _serve(args: argparse.Namespace) -> None:
    """``--serve PORT``: the job page of the state file until SIGINT / SIGTERM."""
    from .._monitor import JobMonitor

    monitor = JobMonitor(state=args.state)
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with monitor.serve(host=args.metrics_host, port=args.serve) as url:
            print(
                f"pipeline status: the job page of {args.state} at {url}/ (metrics: "
                f"{url}/metrics); Ctrl-C to stop",
                file=sys.stderr,
                flush=True,
            )
            async for _ in signals:
                return


def _settle(args: argparse.Namespace) -> None:
    """``--adopt`` / ``--release`` / ``--abandon``, and what ``--abandon`` re-sends."""
    adopt = None if not args.adopt else _adoption(args.adopt)
    spooled = anyio.run(
        lambda: settle_batches(args.state, adopt=adopt, release=args.release, abandon=args.abandon)
    )
    if args.abandon is not None:
        print(
            f"pipeline status: batch {args.abandon} abandoned; {spooled} requests will be sent "
            "again on the next start",
            file=sys.stderr,
        )


def _adoption(text: str) -> tuple[int, str]:
    """``--adopt LOCAL_ID=BATCH_ID``: (local id, batch id)."""
    local, sep, batch_id = text.partition("=")
    if not sep or not local.isdigit() or not batch_id:
        raise ValueError(f"--adopt wants LOCAL_ID=BATCH_ID, got {text!r}")
    return int(local), batch_id


def status_json(status: JobStatus, now: float) -> dict[str, Any]:
    """The status as JSON-ready builtins, each batch with its ``age_seconds``."""
    out: dict[str, Any] = msgspec.to_builtins(status)
    for batch in out["batches"]:
        sent = batch["sent_at"]
        batch["age_seconds"] = None if sent is None else round(now - sent, 3)
    out["now"] = now
    return out


def format_status(status: JobStatus, now: float) -> str:
    """The status as lines for a person."""
    job = status.job
    lines = []
    if job is not None:
        rejects = f" (rejects: {job.rejects_path})" if job.rejects_path else ""
        lines.append(f"job        {job.input_path or '<iterable>'} -> {job.output_path}{rejects}")
    if status.finished:
        state = "finished: every request has its result in the output"
    elif status.cancel == "canceled":
        state = (
            f"canceled: {status.canceled:,} request(s) canceled (re-run with "
            "--resume-canceled to send them again)"
        )
    elif status.cancel == "requested":
        state = "canceling: " + (
            "the worker is canceling it"
            if status.worker_running
            else "cut short; `pipeline cancel --state` (or a re-run) completes it"
        )
    elif status.worker_running:
        state = "running (a worker holds the state)"
    else:
        state = "not finished, no worker running (re-run the same command to resume)"
    in_flight = sum(b.request_count for b in status.batches)
    lines += [
        f"state      {state}",
        f"read       {status.read:,} lines",
        f"rejected   {status.rejected:,} ({status.rejects_written:,} in the rejects file)",
        f"submitted  {status.submitted:,}",
        f"ended      {status.ended:,}",
        f"written    {status.written:,} ({status.output.offset:,} bytes durable in the output)",
        f"spooled    {status.spooled:,} (waiting to be re-sent)",
        *([f"canceled   {status.canceled:,} (held by the job's cancel)"] if status.cancel else []),
        f"in flight  {len(status.batches):,} batches, {in_flight:,} requests",
        f"estimated  ${status.estimated_cost_usd:,.4f} for the requests sent so far (what "
        "--budget-usd counts: input plus max_tokens of output, at batch prices)",
    ]
    lines += [_batch_line(b, now) for b in status.batches]
    return "\n".join(lines) + "\n"


def _batch_line(batch: BatchRecord, now: float) -> str:
    age = "not sent" if batch.sent_at is None else f"sent {_age(now - batch.sent_at)} ago"
    note = {
        "intent": "  (not sent yet)",
        "sending": "  (create outcome unknown until confirmed)",
        "ended": f"  ({batch.results_written:,} results written)",
    }.get(batch.state, "")
    return (
        f"  #{batch.local_id:<5} {batch.batch_id or '-':<30} {batch.state:<8} "
        f"{batch.request_count:>7,} requests  {age}{note}"
    )


def _age(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds // 60 % 60:02d}m"
