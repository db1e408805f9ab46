"""The monitor's HTTP side: a small ASGI app (``/metrics``, ``/healthz``, ``/readyz``,
the job page and its JSON), served by ``_asgi_server.AsgiServer``.

``/metrics`` is ``prometheus_client``'s own ASGI app over the job's registry
(content negotiation, OpenMetrics, gzip are its business). The page's files ship
in the package (``pipeline/_jobpage/``) and are read once.
"""

from __future__ import annotations

import logging
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import msgspec

from ._asgi_server import answer_lifespan

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, MutableMapping

    from prometheus_client import CollectorRegistry

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]
    App = Callable[[Scope, Receive, Send], Awaitable[None]]

__all__ = ("monitor_app",)

logger = logging.getLogger("pipeline")

#: the page's files: URL path -> (file in pipeline/_jobpage, content type)
_ASSETS = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/job.js": ("job.js", "text/javascript; charset=utf-8"),
    "/job.css": ("job.css", "text/css; charset=utf-8"),
}
_TEXT = "text/plain; charset=utf-8"
_NO_METRICS = b"metrics need prometheus-client: pip install 'pipeline[metrics]'\n"


def _read_assets() -> dict[str, tuple[bytes, str]]:
    folder = resources.files("pipeline") / "_jobpage"
    return {path: ((folder / name).read_bytes(), kind) for path, (name, kind) in _ASSETS.items()}


class JobMonitor(Protocol):
    """What the app serves of a ``pipeline._monitor.JobMonitor`` (named here so that
    this module, which the monitor imports late, does not import it back)."""

    def registry(self) -> CollectorRegistry: ...

    async def refresh(self) -> None: ...

    def ready(self) -> tuple[bool, str]: ...

    async def snapshot(self) -> Any: ...


_SNAPSHOT = msgspec.json.Encoder()


def encode_snapshot(snapshot: Any) -> bytes:
    """The page's JSON (a ``JobSnapshot``)."""
    return _SNAPSHOT.encode(snapshot)


def monitor_app(monitor: JobMonitor) -> App:
    """The ASGI app of a ``JobMonitor`` (see ``JobMonitor.asgi_app``)."""
    assets = _read_assets()
    metrics: App | None = None

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        nonlocal metrics
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        path, method = _local_path(scope), scope["method"]
        if not path:  # the mount point itself: the page's links are relative to "/"
            location = (scope.get("root_path", "") + "/").encode()
            await _respond(send, 307, b"", _TEXT, headers=[(b"location", location)])
        elif method not in ("GET", "HEAD"):
            await _respond(send, 405, b"only GET\n", _TEXT)
        elif path == "/metrics":
            if metrics is None:
                metrics = _metrics_app(monitor)
            await monitor.refresh()
            if metrics is None:
                await _respond(send, 501, _NO_METRICS, _TEXT)
            else:
                await metrics(scope, receive, send)
        elif path == "/healthz":
            await _respond(send, 200, b"ok\n", _TEXT)
        elif path == "/readyz":
            await monitor.refresh()
            ok, reason = monitor.ready()
            await _respond(send, 200 if ok else 503, reason.encode() + b"\n", _TEXT)
        elif path == "/api/job":
            body = encode_snapshot(await monitor.snapshot())
            await _respond(send, 200, body, "application/json", cache=False)
        elif path in assets:
            body, kind = assets[path]
            await _respond(send, 200, body, kind)
        else:
            await _respond(send, 404, b"not found\n", _TEXT)

    return app


def _metrics_app(monitor: JobMonitor) -> App | None:
    try:
        from prometheus_client import make_asgi_app
    except ImportError:
        return None
    app: App = make_asgi_app(monitor.registry())
    return app


def _local_path(scope: Scope) -> str:
    """The path within the app: without the prefix it is mounted under (ASGI's
    ``root_path``, which some frameworks leave in ``path``)."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if root and path.startswith(root):
        path = path[len(root) :]
    return path


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    *,
    cache: bool = True,
    headers: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [
        (b"content-type", content_type.encode()),
        (b"content-length", str(len(body)).encode()),
        *(headers or ()),
    ]
    if not cache:
        headers.append((b"cache-control", b"no-store"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
