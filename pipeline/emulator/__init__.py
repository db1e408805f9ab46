"""A local emulator of the Messages (plain and streamed), Message Batches and Models APIs.

An ASGI app (``create_app``) served on loopback by uvicorn (``serve``, or
``python -m pipeline emulator``). It enforces the service's limits, validation,
life cycle, expiry, retention and workspaces; answers with a deterministic fake
model; spools bodies and results to disk (flat memory); and injects faults on
request. With a data directory of its own it survives a restart (graceful or a
kill) and serves the batches created before. See ``pipeline.testing`` for test
helpers.
"""

from __future__ import annotations

from ._app import EmulatorApp as EmulatorApp
from ._app import create_app as create_app
from ._config import EmulatorConfig as EmulatorConfig
from ._config import ManualClock as ManualClock
from ._server import serve as serve

__all__ = (
    "EmulatorApp",
    "EmulatorConfig",
    "ManualClock",
    "create_app",
    "serve",
)
