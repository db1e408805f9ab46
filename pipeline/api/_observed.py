"""Watching the client's HTTP calls: the hook that metrics, traces and health read.

``Client.add_observer(observer)`` makes every HTTP request the client sends (each
try of a retried call, each results download) known to ``observer``:
``observer.api_call(request)`` when it starts, then, on the ``ApiCall`` it returned,
``response(response)`` once the answer's head is in (and its body, unless streamed)
or ``failed(error)`` when no answer came, and for a streamed body (results)
``body_done(received, complete)`` when the stream is closed. Observers must be quick
and must not raise: they run inline, on the event loop.

The hook is ``httpx.AsyncClient.send`` (every request goes through it, whatever the
transport, proxies and redirects), so nothing else of the client changes, and with
no observer the cost is one test per request.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

import httpx

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

__all__ = ("ApiCall", "ApiObserver", "ObservedAsyncClient")


class ApiCall(Protocol):
    """One HTTP request as an observer follows it."""

    def response(self, response: httpx.Response) -> None:
        """The answer's status and headers are in (its body too, unless streamed)."""

    def failed(self, error: BaseException) -> None:
        """No answer came (connection error, timeout, cancellation)."""

    def body_done(self, received: int, complete: bool) -> None:
        """A streamed body was closed after ``received`` bytes; ``complete``: read to
        its end (False: it broke, or the reader stopped early)."""


class ApiObserver(Protocol):
    """What ``Client.add_observer`` takes."""

    def api_call(self, request: httpx.Request) -> ApiCall | None:
        """A request is about to be sent; what follows it (None: not this one)."""


class ObservedAsyncClient(httpx.AsyncClient):
    """``httpx.AsyncClient`` whose ``send`` reports to the observers in ``observers``."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.observers: list[ApiObserver] = []

    async def send(self, request: httpx.Request, **kwargs: Any) -> httpx.Response:
        if not self.observers:
            return await super().send(request, **kwargs)
        calls = [c for c in (o.api_call(request) for o in self.observers) if c is not None]
        try:
            response = await super().send(request, **kwargs)
        except BaseException as exc:
            for call in calls:
                call.failed(exc)
            raise
        for call in calls:
            call.response(response)
        if kwargs.get("stream"):
            response.stream = _WatchedStream(response.stream, calls)
        return response


class _WatchedStream(httpx.AsyncByteStream):
    """A streamed body that tells the observers how it ended, once."""

    def __init__(self, stream: httpx.AsyncByteStream | httpx.SyncByteStream, calls: list[ApiCall]):
        self._stream = stream
        self._calls = calls
        self._received = 0
        self._complete = False
        self._done = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        assert isinstance(self._stream, httpx.AsyncByteStream)
        async for chunk in self._stream:
            self._received += len(chunk)
            yield chunk
        self._complete = True

    async def aclose(self) -> None:
        try:
            if isinstance(self._stream, httpx.AsyncByteStream):
                await self._stream.aclose()
        finally:
            if not self._done:
                self._done = True
                for call in self._calls:
                    call.body_done(self._received, self._complete)
