"""A pipeline definition for ``python -m pipeline worker``: a long-lived worker
that watches a directory for request files.

Run (no API key needed: the embedded emulator answers):

    python -m pipeline worker examples/worker_definition.py

then drop request files into the inbox, whole (write, then rename in):

    cp examples/requests.jsonl examples-out/worker/inbox/a.jsonl.tmp
    mv examples-out/worker/inbox/a.jsonl.tmp examples-out/worker/inbox/a.jsonl

Results are appended to ``examples-out/worker/results.jsonl``; each file taken
is renamed ``NAME.jsonl.done``. Ctrl-C (or SIGTERM) stops gracefully; a second
one exits at once. ``PIPELINE_WORKDIR`` moves the folders (relative to the
current directory), ``PIPELINE_POLL_SECONDS`` sets how often the inbox is looked at.

Re-running the command is safe: the worker goes on with the same job (batches
left in flight are collected, files already ``.done`` are not read again) and
``results.jsonl`` holds each result once. A file dropped in again is read again,
but its lines are rejected as duplicates of custom_ids the job already holds
(see ``results.rejects.jsonl``), never sent twice; for a new job, use another
``PIPELINE_WORKDIR``.

The convention: the worker loads this file and runs the module-level
``pipeline`` or, as here, calls ``make_pipeline()`` (nothing is built at import
time). A service can import the same file and ``await make_pipeline().run()``.
"""

from __future__ import annotations

import os
from pathlib import Path

from pipeline import PipelineConfig, WatchPipeline


def make_pipeline() -> WatchPipeline:
    """The worker's pipeline: inbox -> the Message Batches API -> results.jsonl."""
    workdir = Path(os.environ.get("PIPELINE_WORKDIR", "examples-out/worker"))
    inbox = workdir / "inbox"
    inbox.mkdir(parents=True, exist_ok=True)
    return WatchPipeline(
        inbox,
        workdir / "results.jsonl",
        poll_interval=float(os.environ.get("PIPELINE_POLL_SECONDS", "1.0")),
        config=PipelineConfig(linger_seconds=0.5),
        api_key=os.environ.get("ANTHROPIC_API_KEY"),
    )
