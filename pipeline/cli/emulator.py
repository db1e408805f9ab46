"""``python -m pipeline emulator``: serve the emulator on loopback.

Once it accepts connections it prints exactly one line to stdout,
``emulator listening on http://HOST:PORT``, so that a parent process (or a test)
can read the address, e.g. when ``--port 0`` picked a free port.
"""

from __future__ import annotations

import argparse
import functools
import sys
from typing import Any

from ..api._schema import KNOWN_MODELS
from ..emulator._config import (
    DEFAULT_BATCH_SECONDS,
    DEFAULT_EXPIRY_SECONDS,
    DEFAULT_HEADER_TIMEOUT_SECONDS,
    DEFAULT_KEEP_ALIVE_SECONDS,
    DEFAULT_MAX_BATCH_BYTES,
    DEFAULT_MAX_BATCH_REQUESTS,
    DEFAULT_RETENTION_SECONDS,
    DEFAULT_SLOW_SECONDS,
    EmulatorConfig,
    ManualClock,
)
from .shared import EXIT_OK, EXIT_USAGE

__all__ = ("add_parser", "config_from_args", "run")


def _workspace(text: str) -> tuple[str, str]:
    key, sep, name = text.partition("=")
    if not sep or not key or not name:
        raise argparse.ArgumentTypeError("expected KEY=NAME")
    return key, name


def add_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Register the ``emulator`` sub-command."""
    p: argparse.ArgumentParser = subparsers.add_parser(
        "emulator",
        help="serve the local emulator of the Message Batches API",
        description="Serve a local emulator of the Messages (plain and streamed, with "
        "thinking), Message Batches and Models APIs. "
        "Once ready it prints one line: 'emulator listening on http://HOST:PORT'.",
    )
    add = p.add_argument
    add("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    add(
        "--port",
        type=int,
        default=8765,
        help="port to bind; 0 picks a free one (default: %(default)s)",
    )
    add(
        "--data-dir",
        default=None,
        help="where bodies, results and batch records are kept; a restart on the same "
        "directory serves the batches created before (default: a temp dir removed at exit)",
    )
    add(
        "--max-batch-requests",
        type=int,
        default=DEFAULT_MAX_BATCH_REQUESTS,
        help="most requests per batch; more is a 400 (default: %(default)s)",
    )
    add(
        "--max-batch-bytes",
        type=int,
        default=DEFAULT_MAX_BATCH_BYTES,
        help="largest create body in bytes; more is a 413 request_too_large (default: %(default)s)",
    )
    add(
        "--batch-seconds",
        type=float,
        default=DEFAULT_BATCH_SECONDS,
        help="how long a batch stays in_progress; 0 ends it at the first look (default: %(default)s)",
    )
    add(
        "--cancel-seconds",
        type=float,
        default=0.0,
        help="how long a batch stays canceling after a cancel (default: %(default)s)",
    )
    add(
        "--expiry-seconds",
        type=float,
        default=DEFAULT_EXPIRY_SECONDS,
        help="requests not processed this long after created_at end expired (default: %(default)s)",
    )
    add(
        "--retention-seconds",
        type=float,
        default=DEFAULT_RETENTION_SECONDS,
        help="results are available this long after created_at (default: %(default)s)",
    )
    add(
        "--request-error-rate",
        type=float,
        default=0.0,
        help="fraction of requests that end errored with api_error (default: %(default)s)",
    )
    add(
        "--fault-rate",
        type=float,
        default=0.0,
        help="fraction of API answers replaced by 429 (with retry-after), 500 or 529 (default: %(default)s)",
    )
    add(
        "--retry-after",
        type=float,
        default=0.0,
        help="seconds the injected 429s ask the client to wait (default: %(default)s)",
    )
    add(
        "--slow-rate",
        type=float,
        default=0.0,
        help="fraction of API answers delayed by --slow-seconds (default: %(default)s)",
    )
    add(
        "--slow-seconds",
        type=float,
        default=DEFAULT_SLOW_SECONDS,
        help="delay of a slow answer (default: %(default)s)",
    )
    add(
        "--cut-rate",
        type=float,
        default=0.0,
        help="fraction of results downloads dropped in the middle of the body (default: %(default)s)",
    )
    add(
        "--stream-error-rate",
        type=float,
        default=0.0,
        help="fraction of streamed Messages answers broken off by an 'error' event "
        "(overloaded_error) after their first content block (default: %(default)s)",
    )
    add("--seed", type=int, default=0, help="seed of every random choice (default: %(default)s)")
    add(
        "--workspace",
        type=_workspace,
        action="append",
        default=[],
        metavar="KEY=NAME",
        help="put API key KEY in workspace NAME (repeatable); keys not listed each get their own",
    )
    add(
        "--manual-clock",
        action="store_true",
        help="freeze time; move it with POST /_emulator/advance?seconds=N",
    )
    add(
        "--models",
        default=",".join(sorted(KNOWN_MODELS)),
        help="comma-separated accepted models, or 'any' (default: the models the service is "
        "known to accept, documented and later)",
    )
    add(
        "--header-timeout",
        type=float,
        default=DEFAULT_HEADER_TIMEOUT_SECONDS,
        help="seconds a connection may take to send a request's headers before it is "
        "closed (default: %(default)s)",
    )
    add(
        "--keep-alive",
        type=int,
        default=DEFAULT_KEEP_ALIVE_SECONDS,
        help="seconds an idle keep-alive connection stays open (default: %(default)s)",
    )
    add(
        "--allow-field",
        action="append",
        default=[],
        metavar="NAME[,NAME...]",
        help="top-level params taken unchecked (fields the service added after this "
        "version; repeatable)",
    )
    p.set_defaults(func=run)
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """The EmulatorConfig the command-line flags describe."""
    models = (
        None
        if args.models.strip() == "any"
        else frozenset(m.strip() for m in args.models.split(",") if m.strip())
    )
    return EmulatorConfig(
        max_batch_requests=args.max_batch_requests,
        max_batch_bytes=args.max_batch_bytes,
        batch_seconds=args.batch_seconds,
        cancel_seconds=args.cancel_seconds,
        expiry_seconds=args.expiry_seconds,
        retention_seconds=args.retention_seconds,
        request_error_rate=args.request_error_rate,
        fault_rate=args.fault_rate,
        retry_after_seconds=args.retry_after,
        slow_rate=args.slow_rate,
        slow_seconds=args.slow_seconds,
        cut_rate=args.cut_rate,
        stream_error_rate=args.stream_error_rate,
        seed=args.seed,
        models=models,
        allow_fields=frozenset(
            name.strip() for names in args.allow_field for name in names.split(",") if name.strip()
        ),
        workspaces=dict(args.workspace),
        clock=ManualClock() if args.manual_clock else None,
        header_timeout_seconds=args.header_timeout,
        keep_alive_seconds=args.keep_alive,
    )


def _announce(url: str) -> None:
    sys.stdout.write(f"emulator listening on {url}\n")
    sys.stdout.flush()


def run(args: argparse.Namespace) -> int:
    """Serve until SIGINT / SIGTERM; exit code 0 on a clean stop, 2 on bad flags."""
    import anyio

    from ..emulator import serve

    try:
        config = config_from_args(args)
    except ValueError as exc:
        sys.stderr.write(f"pipeline emulator: {exc}\n")
        return EXIT_USAGE
    main = functools.partial(
        serve, config, host=args.host, port=args.port, data_dir=args.data_dir, ready=_announce
    )
    try:
        anyio.run(main)
    except KeyboardInterrupt:
        pass
    return EXIT_OK
