"""uvicorn serving one ASGI app on an already-bound socket, from a task of the
current event loop: what the emulator and the job monitor both run.

uvicorn is imported only when a server is built. Signals stay the caller's business
(uvicorn's own handlers are switched off), and only ``stop()`` ends the server, so
it always shuts down cleanly (connections closed, socket released) even when the
calling task is cancelled.
"""

from __future__ import annotations

import contextlib
import socket
from typing import TYPE_CHECKING, Any

import anyio

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping

    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

__all__ = ("DEFAULT_BACKLOG", "AsgiServer", "answer_lifespan", "bind", "url_of")

#: A normal listen backlog (Python's default of 5 resets connections under load).
DEFAULT_BACKLOG = 2048
_START_TIMEOUT = 30.0


def bind(host: str, port: int) -> socket.socket:
    """A listening, non-blocking TCP socket on ``host:port`` (port 0: a free one)."""
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


async def answer_lifespan(receive: Receive, send: Send) -> None:
    """Answer an ASGI server's lifespan messages (an app with nothing to set up)."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


class AsgiServer:
    """uvicorn serving ``app`` on ``sock``; ``options`` are more ``uvicorn.Config``
    arguments (``http=``, ``timeout_keep_alive=``...)."""

    def __init__(self, app: Any, sock: socket.socket, *, name: str, **options: Any) -> None:
        import uvicorn

        self.app = app
        self.sock = sock
        self.url = url_of(sock)
        self._name = name
        config = uvicorn.Config(
            app,
            lifespan="off",
            access_log=False,
            log_config=None,
            log_level="warning",
            backlog=DEFAULT_BACKLOG,
            **{"timeout_graceful_shutdown": 2, **options},
        )
        self._server = uvicorn.Server(config)
        self._server.capture_signals = _no_signals  # type: ignore[method-assign]
        self._finished = anyio.Event()

    @property
    def started(self) -> bool:
        """True once uvicorn accepts connections."""
        return bool(self._server.started)

    async def _run(self) -> None:
        try:
            with anyio.CancelScope(shield=True):  # only stop() ends it: a clean close
                await self._server.serve(sockets=[self.sock])
        finally:
            self._finished.set()

    async def wait_finished(self) -> None:
        """Wait until uvicorn has exited (after ``stop()``)."""
        await self._finished.wait()

    def stop(self) -> None:
        """Ask the server to finish (it closes within about 0.1 s)."""
        self._server.should_exit = True

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[AsgiServer]:
        """Serve in a task while the block runs; wait until connections are accepted."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._run)
            try:
                with anyio.fail_after(_START_TIMEOUT):
                    while not self.started:
                        if self._finished.is_set():
                            raise RuntimeError(f"the {self._name} exited during start-up")
                        await anyio.sleep(0.002)
                yield self
            finally:
                self.stop()


@contextlib.contextmanager
def _no_signals() -> Iterator[None]:
    yield
