"""Serving the emulator with uvicorn (imported only here, only when serving).

``serve()`` runs until the process is told to stop (SIGINT / SIGTERM) or the
calling task is cancelled; ``Server`` is the building block that the test helper in
``pipeline.testing`` drives from a task of the current event loop.
"""

from __future__ import annotations

import logging
import signal
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from .._asgi_server import AsgiServer, bind
from ._app import CutConnection, EmulatorApp

if TYPE_CHECKING:
    import asyncio
    import socket
    from collections.abc import Callable
    from pathlib import Path

    from ._config import EmulatorConfig

__all__ = ("Server", "bind", "serve")


class _DropCutTracebacks(logging.Filter):
    """Keep injected connection cuts out of uvicorn's error log."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, CutConnection)


def _install_log_filter() -> None:
    logger = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, _DropCutTracebacks) for f in logger.filters):
        logger.addFilter(_DropCutTracebacks())


def _protocol(header_timeout: float) -> type[asyncio.Protocol]:
    """uvicorn's httptools protocol with a deadline on the request head.

    uvicorn closes an idle keep-alive connection (``timeout_keep_alive``) but sets no
    limit on a connection that has sent no request yet, or only part of its headers
    (its keep-alive timer stops at the first byte): a few such clients would hold
    their sockets forever. This adds that one timer, and nothing else.
    """
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    class HeaderDeadlineProtocol(HttpToolsProtocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            self._arm()

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._arm()

        def on_headers_complete(self) -> None:
            self._disarm()
            super().on_headers_complete()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            super().connection_lost(exc)

        def _arm(self) -> None:
            self._disarm()
            self._deadline = self.loop.call_later(header_timeout, self._expire)

        def _disarm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
                self._deadline = None

        def _expire(self) -> None:
            self._deadline = None
            if not self.transport.is_closing():
                self.transport.close()

    return HeaderDeadlineProtocol


class Server(AsgiServer):
    """uvicorn serving an EmulatorApp on an already-bound socket, with a deadline on
    request heads and the configured keep-alive."""

    app: EmulatorApp

    def __init__(self, app: EmulatorApp, sock: socket.socket) -> None:
        _install_log_filter()
        super().__init__(
            app,
            sock,
            name="emulator server",
            http=_protocol(app.config.header_timeout_seconds),
            timeout_keep_alive=app.config.keep_alive_seconds,
        )


async def _stop_on_signal(
    server: Server, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        task_status.started()  # handlers are in place before the ready line is printed
        async for _ in signals:
            server.stop()
            return


async def serve(
    config: EmulatorConfig | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    data_dir: str | Path | None = None,
    ready: Callable[[str], Any] | None = None,
    handle_signals: bool = True,
) -> None:
    """Serve the emulator until SIGINT / SIGTERM (or cancellation); call ``ready(url)``
    once it accepts connections. The data directory defaults to a temp dir removed at exit;
    a given one is kept, and serving again on it serves the batches created before."""
    app = EmulatorApp(config, data_dir)
    try:
        sock = bind(host, port)
        try:
            async with (
                Server(app, sock).running() as server,
                anyio.create_task_group() as tg,
            ):
                if handle_signals:
                    await tg.start(_stop_on_signal, server)
                if ready is not None:
                    ready(server.url)
                await server.wait_finished()
                tg.cancel_scope.cancel()
        finally:
            sock.close()
    finally:
        app.close()
