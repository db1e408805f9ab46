"""Test helpers: the emulator on loopback, in-process or as a separate process.

``serve_emulator`` runs uvicorn in a task of the current event loop on
``127.0.0.1`` with a free port, and yields a handle whose ``state`` is the
emulator's store (batches, how often each custom_id was submitted) for assertions.
``start_emulator_process`` runs ``python -m pipeline emulator`` in a subprocess, for
tests that must kill or restart one side. ``read_submissions`` reads how often each
custom_id was submitted straight from an emulator's data directory (its
``submissions.log``, kept across restarts), e.g. the embedded emulator's
``OUT.jsonl.state.emulator/`` after the worker exited or was killed.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import typing

from pipeline.emulator._app import EmulatorApp
from pipeline.emulator._config import EmulatorConfig, ManualClock
from pipeline.emulator._disk import read_submissions
from pipeline.emulator._model import reply_text

if typing.TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from pipeline.emulator._store import Store

__all__ = (
    "EmulatorApp",
    "EmulatorConfig",
    "EmulatorHandle",
    "ManualClock",
    "read_submissions",
    "reply_text",
    "serve_emulator",
    "start_emulator_process",
)

_READY_PREFIX = "emulator listening on "


class EmulatorHandle:
    """A running emulator: its ``url``, its ``app`` and ``state`` (the Store), its ``clock``."""

    def __init__(self, url: str, app: EmulatorApp) -> None:
        self.url = url
        self.app = app
        self.config = app.config

    @property
    def state(self) -> Store:
        """The emulator's store: batches, submissions, stats."""
        return self.app.state

    @property
    def clock(self) -> ManualClock | None:
        """The ManualClock the config was given, if any."""
        clock = self.config.clock
        return clock if isinstance(clock, ManualClock) else None

    def advance(self, seconds: float) -> None:
        """Move the emulator's ManualClock forward."""
        if self.clock is None:
            raise RuntimeError("advance() needs EmulatorConfig(clock=ManualClock())")
        self.clock.advance(seconds)

    def submissions(self) -> dict[str, int]:
        """How many times each custom_id was submitted, across all batches (and across
        restarts on the same data directory)."""
        return self.app.state.submissions()


@contextlib.asynccontextmanager
async def serve_emulator(
    config: EmulatorConfig | None = None, *, data_dir: str | Path | None = None
) -> AsyncIterator[EmulatorHandle]:
    """Serve the emulator on ``127.0.0.1`` (free port) while the block runs; on a
    ``data_dir`` served before, the batches created then are served again."""
    from pipeline.emulator._server import Server, bind

    app = EmulatorApp(config, data_dir)
    try:
        sock = bind("127.0.0.1", 0)
        try:
            async with Server(app, sock).running() as server:
                yield EmulatorHandle(server.url, app)
        finally:
            sock.close()
    finally:
        app.close()


@contextlib.contextmanager
def start_emulator_process(*args: str, timeout: float = 30.0) -> Iterator[str]:
    """Run ``python -m pipeline emulator --port 0 *args``; yield its URL; stop it at exit."""
    command = [sys.executable, "-m", "pipeline", "emulator", "--port", "0", *args]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith(_READY_PREFIX):
            raise RuntimeError(f"the emulator did not start (exit code {proc.poll()}): {line!r}")
        yield line[len(_READY_PREFIX) :].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
