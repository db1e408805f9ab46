"""The ``pipeline`` command line: one sub-command per module, imported lazily so
that start-up stays fast (the emulator's server stack loads only for ``emulator``).

Each sub-command module (``run``, ``worker``, ``status``, ``emulator``, ``cancel``) exposes
``add_parser(subparsers)``, which registers the sub-command and sets ``func``
(taking the parsed namespace, returning an exit code); what they share (exit
codes, the output options, the signal handler of ``run`` and ``worker``) is in
``shared``. Only this package knows argparse: it calls the library with keyword
arguments, and the library never imports it.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Sequence

__all__ = ("main",)

#: sub-command name -> module that defines it
_COMMANDS = {
    "run": "pipeline.cli.run",
    "emulator": "pipeline.cli.emulator",
    "status": "pipeline.cli.status",
    "worker": "pipeline.cli.worker",
    "cancel": "pipeline.cli.cancel",
}

_HELP = {
    "run": "run a job: a JSONL file of batch requests to a JSONL file of results",
    "emulator": "serve the local emulator of the Message Batches API",
    "status": "show the progress of a job from its state file",
    "worker": "run a Python pipeline definition as a long-lived worker",
    "cancel": "cancel a job: its batches at the service too, and mark it canceled",
}


def build_parser(argv: Sequence[str]) -> argparse.ArgumentParser:
    """The ``pipeline`` parser, with the sub-command named in ``argv`` in full."""
    parser = argparse.ArgumentParser(
        prog="pipeline",
        description="Push Messages requests through the Message Batches API and stream the results back.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    # Only the chosen sub-command's module is imported; the others get a stub entry.
    wanted = [a for a in argv if a in _COMMANDS][:1]
    for name in _COMMANDS:
        if name in wanted:
            module = importlib.import_module(_COMMANDS[name])
            module.add_parser(sub)
        else:
            sub.add_parser(name, help=_HELP[name])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command ``argv`` (default: ``sys.argv[1:]``) names; its exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(args_list)
    args = parser.parse_args(args_list)
    code: int = args.func(args)
    return code
