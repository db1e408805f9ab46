"""Serving the emulator with uvicorn (imported only here, only when serving).

``serve()`` runs until the process is told to stop (SIGINT / SIGTERM) or the
calling task is cancelled; ``Server`` is the building block that the test helper in
``pipeline.testing`` drives from a task of the current event loop.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from ._app import CutConnection, EmulatorApp

if TYPE_CHECKING:
    import asyncio
    from collections.abc import AsyncIterator, Callable, Iterator
    from pathlib import Path

    from ._config import EmulatorConfig

__all__ = ("DEFAULT_BACKLOG", "Server", "bind", "serve")

#: A normal listen backlog (Python's default of 5 resets connections under load).
DEFAULT_BACKLOG = 2048
_START_TIMEOUT = 30.0


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


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0 picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio sets TCP_NODELAY on accepted sockets only then
    # (with proto 0 every keep-alive answer waits ~40 ms for a delayed ACK).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(DEFAULT_BACKLOG)
    except OSError:
        sock.close()
        raise
    sock.setblocking(False)
    return sock


def url_of(sock: socket.socket) -> str:
    """``http://HOST:PORT`` of a bound socket."""
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class Server:
    """uvicorn serving an EmulatorApp on an already-bound socket."""

    def __init__(self, app: EmulatorApp, sock: socket.socket) -> None:
        import uvicorn

        self.app = app
        self.sock = sock
        self.url = url_of(sock)
        config = uvicorn.Config(
            app,
            http=_protocol(app.config.header_timeout_seconds),
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            backlog=DEFAULT_BACKLOG,
            timeout_graceful_shutdown=2,
            timeout_keep_alive=app.config.keep_alive_seconds,
        )
        _install_log_filter()
        self._server = uvicorn.Server(config)
        # Signals are the caller's business (serve() handles them itself), so that
        # uvicorn never re-raises a SIGTERM before our clean-up has run.
        self._server.capture_signals = _no_signals  # type: ignore[method-assign]

        self._finished = anyio.Event()

    @property
    def started(self) -> bool:
        """True once uvicorn accepts connections."""
        return bool(self._server.started)

    async def _run(self) -> None:
        # Shielded: only stop() ends the server, so that it always shuts down cleanly
        # (connections closed, socket released) even when the caller is cancelled.
        try:
            with anyio.CancelScope(shield=True):
                await self._server.serve(sockets=[self.sock])
        finally:
            self._finished.set()

    async def wait_finished(self) -> None:
        """Wait until uvicorn has exited (after ``stop()`` or a signal)."""
        await self._finished.wait()

    def stop(self) -> None:
        """Ask the server to finish (it closes within about 0.1 s)."""
        self._server.should_exit = True

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Server]:
        """Serve in a task while the block runs; wait until connections are accepted."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run)
            try:
                with anyio.fail_after(_START_TIMEOUT):
                    while not self.started:
                        if self._finished.is_set():
                            raise RuntimeError("the emulator server exited during start-up")
                        await anyio.sleep(0.002)
                yield self
            finally:
                self.stop()


@contextlib.contextmanager
def _no_signals() -> Iterator[None]:
    yield


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
