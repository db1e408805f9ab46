"""The async client of the Message Batches and Messages APIs (one ``httpx.AsyncClient``).

Bodies go out as the caller encoded them (a batch body is spliced from validated
lines, never re-encoded), answers are decoded with one module-level msgspec decoder
per type, and results are streamed in the transport's natural chunks through a sync
splitter (``LineSplitter``: lists of lines; ``BlockSplitter``: blocks of lines as
they came, for the results stage). Retries follow the SDK's policy (``_retry.py``)
except for batch creation, which is re-sent only when it certainly did not reach
the service.

The API key lives only in the ``httpx`` client's default headers: it is never
stored on ``Client``, never part of a repr, a log line or an error message.
"""

from __future__ import annotations

import enum
import gc
import logging
import os
import random
import time
from typing import TYPE_CHECKING, NoReturn, TypeVar
from urllib.parse import quote

import anyio
import httpx
import msgspec

from .._config import (
    AUTH_TOKEN_ENV,
    BASE_URL_ENV,
    DEFAULT_BASE_URL,
    base_url_problem,
    secret_problem,
)
from .._errors import (
    APIConnectionError,
    APIError,
    CreateOutcomeUnknownError,
    ResultStreamError,
    UsageError,
    status_error_class,
)
from .._logging import secret_forms
from . import _retry
from ._body import SplicedBody
from ._lines import BlockSplitter, LineSplitter, Splitter
from ._observed import ApiObserver, ObservedAsyncClient
from ._types import (
    DeletedMessageBatch,
    Message,
    MessageBatch,
    MessageBatchList,
    ModelInfo,
    ModelList,
    ResultLine,
    TokenCount,
)

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Mapping
    from types import TracebackType

__all__ = (
    "DEFAULT_MAX_RETRIES",
    "DEFAULT_TIMEOUT",
    "Client",
    "check_base_url",
    "check_environment",
    "check_secret",
)

DEFAULT_MAX_RETRIES = 4
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)

ANTHROPIC_VERSION = "2023-06-01"
BATCHES_BETA = "message-batches-2024-09-24"

logger = logging.getLogger("pipeline.api")

_T = TypeVar("_T")


_BATCH = msgspec.json.Decoder(MessageBatch)
_BATCH_LIST = msgspec.json.Decoder(MessageBatchList)
_DELETED = msgspec.json.Decoder(DeletedMessageBatch)
_MESSAGE = msgspec.json.Decoder(Message)
_TOKENS = msgspec.json.Decoder(TokenCount)
_MODEL_LIST = msgspec.json.Decoder(ModelList)
_MODEL_INFO = msgspec.json.Decoder(ModelInfo)
#: Decodes one result line (``results()``); shared by every download.
RESULT_LINE_DECODER = msgspec.json.Decoder(ResultLine)

_JSON = {"content-type": "application/json"}


class _SentOnce:
    """A create body as a stream that yields it once and lets go of it.

    httpx keeps the ``Request`` of every response, and with it a ``bytes`` body, in a
    reference cycle that only the cyclic GC frees (PERFORMANCE.md, the httpx trap):
    a body of several MB per create would stay alive until then. Streamed, the
    request holds this object instead, empty once sent, so the body is freed by
    reference counting the moment the create returns, with no ``gc.collect()``.
    A ``SplicedBody`` goes out piece by piece (a MiB at a time, never joined whole).
    The caller sets ``content-length`` (httpx then sends no chunked encoding).
    """

    __slots__ = ("_data",)

    def __init__(self, data: bytes | SplicedBody) -> None:
        self._data: bytes | SplicedBody | None = data

    async def __aiter__(self) -> AsyncIterator[bytes]:
        data, self._data = self._data, None
        if isinstance(data, bytes):
            yield data
        elif data is not None:
            for piece in data.pieces():
                yield piece


_BINARY = {"accept": "application/binary"}
# A 502 or 504 on create comes from a gateway that lost the service's answer (or gave
# up waiting for it): the service may have created the batch, so it is an unknown
# outcome, not a refusal. A 500 / 503 / 529 / 429 is the API's own answer (an
# ``api_error`` / ``overloaded_error`` envelope): the create did not happen.
_CREATE_UNKNOWN_STATUSES = frozenset({502, 504})


class _State(enum.Enum):
    UNOPENED = "unopened"
    OPEN = "open"
    CLOSED = "closed"


class Client:
    """Async client of the Batches API. Use as ``async with Client(...) as client``.

    ``sleep`` and ``random`` are injected so retry schedules are testable in virtual
    time. The API key is held privately and never appears in a repr, log or error.

    Keyword-only extras: ``clock`` (POSIX time, for ``retry-after`` dates and the
    ``sent_at`` of an unknown create) and ``collect_after_create``, which runs a full
    ``gc.collect()`` after each create. It is off by default: a create body goes out
    as a one-shot stream (``_SentOnce``), so the reference cycle httpx keeps around
    each request (see PERFORMANCE.md) no longer holds the body.
    """

    def __init__(
        self,
        *,
        api_key: str | None,
        auth_token: str | None = None,
        base_url: str = DEFAULT_BASE_URL,
        beta: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_connections: int = 20,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        random: Callable[[], float] = random.random,
        clock: Callable[[], float] = time.time,
        collect_after_create: bool = False,
    ) -> None:
        if max_retries < 0:
            raise ValueError(f"max_retries must be >= 0, got {max_retries}")
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1, got {max_connections}")
        check_secret(api_key, "the API key (api_key)")
        check_secret(auth_token, "the bearer token (auth_token)")
        check_base_url(str(base_url), "the base URL (base_url)")
        headers = {"anthropic-version": ANTHROPIC_VERSION, "accept": "application/json"}
        if beta:
            headers["anthropic-beta"] = BATCHES_BETA
        if extra_headers:
            headers.update(extra_headers)
        if api_key is not None:
            headers["x-api-key"] = api_key
        if auth_token is not None:
            headers["authorization"] = f"Bearer {auth_token}"
        #: what ``_redact`` masks in text that came from outside: each printed form of
        #: the key and token (escaped, as bytes, JSON-escaped...), longest first
        forms = {f for secret in (api_key, auth_token) if secret for f in secret_forms(secret)}
        self._secrets = tuple(sorted(forms, key=len, reverse=True))
        self._http = ObservedAsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=timeout,
            limits=httpx.Limits(
                max_connections=max_connections, max_keepalive_connections=max_connections
            ),
            transport=transport,
            # plain http (the emulator on loopback) needs no TLS: skipping the CA
            # bundle saves ~30 ms of start-up; https verifies as always
            verify=not str(base_url).startswith("http://"),
        )
        self._base_url = base_url
        self._beta = beta
        self._max_retries = max_retries
        self._sleep = sleep
        self._random = random
        self._clock = clock
        self._collect_after_create = collect_after_create
        self._state = _State.UNOPENED
        self._used = False
        self._retries = 0

    def __repr__(self) -> str:
        return (
            f"Client(base_url={self._base_url!r}, beta={self._beta}, "
            f"max_retries={self._max_retries}, state={self._state.value})"
        )

    @property
    def retries(self) -> int:
        """Retries taken so far by every call of this client (for statistics)."""
        return self._retries

    def add_observer(self, observer: ApiObserver) -> None:
        """Tell ``observer`` about every HTTP request this client sends from now on
        (metrics, traces, health: see ``pipeline.api._observed``)."""
        self._http.observers.append(observer)

    def remove_observer(self, observer: ApiObserver) -> None:
        """Stop telling ``observer`` (a no-op if it was not added)."""
        if observer in self._http.observers:
            self._http.observers.remove(observer)

    async def __aenter__(self) -> Client:
        if self._state is not _State.UNOPENED:
            raise UsageError(f"cannot open a client that is {self._state.value}")
        if not self._used:  # httpx refuses __aenter__ once a request went out
            await self._http.__aenter__()
        self._state = _State.OPEN
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool; idempotent."""
        if self._state is _State.CLOSED:
            return
        self._state = _State.CLOSED
        with anyio.CancelScope(shield=True):
            await self._http.aclose()

    # -- batches -------------------------------------------------------------------

    async def create_batch(self, body: bytes | SplicedBody, *, request_count: int) -> MessageBatch:
        """POST an already-encoded ``{"requests":[...]}`` body: whole ``bytes``, or a
        ``SplicedBody`` that is joined piece by piece as it is sent (a 65 MB body
        then costs a MiB of memory, not a second copy of the requests).

        Retried only when the request certainly did not reach the service (connect
        errors, and 429/5xx answers, which mean "not created"). When the body may
        have been sent and no answer came (read timeout, connection dropped after
        writing), raises ``CreateOutcomeUnknownError`` instead of re-sending.
        """
        try:
            return await self._call(
                "POST",
                "/v1/messages/batches",
                _BATCH,
                content=body,
                create_count=request_count,
            )
        finally:
            if self._collect_after_create:
                gc.collect()

    async def retrieve_batch(self, batch_id: str) -> MessageBatch:
        """The batch's current state (idempotent: used to poll)."""
        return await self._call("GET", _batch_path(batch_id), _BATCH)

    async def list_batches_page(
        self, *, limit: int | None = None, before_id: str | None = None, after_id: str | None = None
    ) -> MessageBatchList:
        """One page of the workspace's batches, newest first."""
        params: dict[str, str | int] = {}
        if limit is not None:
            params["limit"] = limit
        if before_id is not None:
            params["before_id"] = before_id
        if after_id is not None:
            params["after_id"] = after_id
        return await self._call("GET", "/v1/messages/batches", _BATCH_LIST, params=params)

    def list_batches(
        self, *, limit: int | None = None, before_id: str | None = None, after_id: str | None = None
    ) -> AsyncIterator[MessageBatch]:
        """Every batch of the workspace, newest first, walking pages like the SDK."""
        self._check_usable()
        return self._walk_pages(limit, before_id, after_id)

    async def cancel_batch(self, batch_id: str) -> MessageBatch:
        """Ask the service to cancel the batch; it moves to ``canceling``."""
        return await self._call("POST", _batch_path(batch_id) + "/cancel", _BATCH)

    async def delete_batch(self, batch_id: str) -> DeletedMessageBatch:
        """Delete an ended batch (the service refuses one still processing)."""
        return await self._call("DELETE", _batch_path(batch_id), _DELETED)

    def results_lines(self, batch: MessageBatch) -> AsyncIterator[list[bytes]]:
        """The raw JSONL lines of an ended batch's results, a list per network chunk.

        Lines carry no line terminator (``\\n`` and ``\\r\\n`` both stripped) and blank
        lines are skipped. The response is always closed, also on error or when the
        consumer stops early. A broken download raises ``ResultStreamError`` (callers
        re-open and skip what they already have).

        Raises ``UsageError`` at once for a batch that has not ended, and
        ``ResultStreamError`` for an ended batch without a ``results_url``.
        """
        return self._results_lines(batch)

    def results_blocks(self, batch: MessageBatch) -> AsyncIterator[bytes]:
        """``results_lines`` in blocks of lines left joined, of network chunks gathered
        (see ``BlockSplitter``): to decode in one call and to write as they came."""
        return self._stream_lines(batch.id, self._results_url(batch), BlockSplitter())

    def results(self, batch: MessageBatch) -> AsyncIterator[ResultLine]:
        """Typed result lines of an ended batch (built on ``results_lines``).

        A line that is not a valid result raises ``ResultStreamError``.
        """
        return self._decode_results(batch.id, self._results_lines(batch))

    def _results_lines(self, batch: MessageBatch) -> AsyncGenerator[list[bytes]]:
        return self._stream_lines(batch.id, self._results_url(batch), LineSplitter())

    def _results_url(self, batch: MessageBatch) -> str:
        self._check_usable()
        if batch.results_url is None:
            if batch.processing_status != "ended":
                raise UsageError(
                    f"batch {batch.id} is {batch.processing_status}: results are "
                    "available once it has ended (retrieve it again first)"
                )
            raise ResultStreamError(batch.id, "the ended batch has no results_url")
        return batch.results_url

    # -- messages ------------------------------------------------------------------

    async def create_message(self, params: bytes) -> Message:
        """POST /v1/messages with already-encoded params."""
        return await self._call("POST", "/v1/messages", _MESSAGE, content=params)

    async def count_tokens(self, params: bytes) -> int:
        """POST /v1/messages/count_tokens with already-encoded params; input tokens."""
        count = await self._call("POST", "/v1/messages/count_tokens", _TOKENS, content=params)
        return count.input_tokens

    # -- models --------------------------------------------------------------------

    async def list_models(self) -> list[ModelInfo]:
        """``GET /v1/models``, every page: the models the service offers (active and
        deprecated), newest first."""
        models: list[ModelInfo] = []
        query: dict[str, str | int] = {"limit": 1000}
        while True:
            page = await self._call("GET", "/v1/models", _MODEL_LIST, params=query)
            models += page.data
            if not page.has_more or not page.data or page.last_id is None:
                return models
            query = {"limit": 1000, "after_id": page.last_id}

    async def get_model(self, model: str) -> ModelInfo:
        """``GET /v1/models/{model}``: one model, an alias resolved to the model it names."""
        return await self._call("GET", f"/v1/models/{quote(model, safe='')}", _MODEL_INFO)

    # -- internals -----------------------------------------------------------------

    def _check_usable(self) -> None:
        if self._state is _State.CLOSED:
            raise UsageError("the client is closed")
        self._used = True

    async def _call(
        self,
        method: str,
        path: str,
        decoder: msgspec.json.Decoder[_T],
        *,
        content: bytes | SplicedBody | None = None,
        params: Mapping[str, str | int] | None = None,
        create_count: int | None = None,
    ) -> _T:
        """Send one request with retries and decode its answer.

        ``create_count`` marks a batch create: it is retried only when it certainly
        did not reach the service.
        """
        self._check_usable()
        headers = _JSON if content is not None else None
        if create_count is not None and content is not None:
            headers = {**_JSON, "content-length": str(len(content))}
        for retries_taken in range(self._max_retries + 1):
            last = retries_taken == self._max_retries
            sent_at = self._clock()
            # a create body goes out as a one-shot stream that httpx does not keep
            # (see ``_SentOnce``); each try sends it anew
            body: bytes | _SentOnce | None
            if isinstance(content, SplicedBody):
                body = _SentOnce(content)
            else:
                body = _SentOnce(content) if create_count is not None and content else content
            try:
                response = await self._http.request(
                    method, path, content=body, params=params, headers=headers
                )
            except httpx.RequestError as exc:
                if create_count is not None and not _retry.create_not_sent(exc):
                    self._outcome_unknown(create_count, content, sent_at, _retry.describe(exc), exc)
                if last or not _retry.retryable_transport_error(exc):
                    raise self._connection_error(method, path, exc) from exc
                await self._backoff(method, path, retries_taken, None, _retry.describe(exc))
                continue
            if response.is_success:
                return self._decode(method, path, decoder, response, create_count, content, sent_at)
            if create_count is not None and response.status_code in _CREATE_UNKNOWN_STATUSES:
                cause = f"{response.status_code} answer from a gateway"
                self._outcome_unknown(create_count, content, sent_at, cause, None)
            if last or not _retry.retryable_status(response):
                raise self._status_error(method, path, response)
            reason = f"status {response.status_code}"
            await self._backoff(method, path, retries_taken, response.headers, reason)
        raise AssertionError("unreachable")  # pragma: no cover

    def _decode(
        self,
        method: str,
        path: str,
        decoder: msgspec.json.Decoder[_T],
        response: httpx.Response,
        create_count: int | None,
        content: bytes | SplicedBody | None,
        sent_at: float,
    ) -> _T:
        try:
            return decoder.decode(response.content)
        except msgspec.DecodeError as exc:
            reason = f"invalid {response.status_code} answer: {exc}"
            if create_count is not None:  # the batch was created; we cannot tell its id
                self._outcome_unknown(create_count, content, sent_at, reason, exc)
            message = f"{method} {path}: {self._redact(reason)}"
            raise APIError(message, method=method, url=path) from exc

    async def _backoff(
        self,
        method: str,
        path: str,
        retries_taken: int,
        headers: httpx.Headers | None,
        reason: str,
    ) -> None:
        delay = _retry.retry_delay(headers, retries_taken, self._random, self._clock())
        self._retries += 1
        logger.info(
            "retrying %s %s after %s in %.3f s (retry %d of %d)",
            method,
            path,
            self._redact(reason),
            delay,
            retries_taken + 1,
            self._max_retries,
        )
        await self._sleep(delay)

    def _outcome_unknown(
        self,
        request_count: int,
        content: bytes | SplicedBody | None,
        sent_at: float,
        cause: str,
        exc: BaseException | None,
    ) -> NoReturn:
        error = CreateOutcomeUnknownError(
            request_count=request_count,
            body_bytes=0 if content is None else len(content),
            sent_at=sent_at,
            cause=self._redact(cause),
        )
        raise error from exc

    def _connection_error(self, method: str, path: str, exc: Exception) -> APIConnectionError:
        message = f"{method} {path}: no answer from the service: {_retry.describe(exc)}"
        return APIConnectionError(self._redact(message), method=method, url=path)

    def _status_error(self, method: str, path: str, response: httpx.Response) -> APIError:
        status = response.status_code
        error_type, message, request_id = _retry.parse_error(response)
        request_id = response.headers.get("request-id") or request_id
        cls = status_error_class(status)
        return cls(
            status_code=status,
            error_type=self._redact(error_type),
            message=self._redact(message),
            request_id=request_id,
            method=method,
            url=path,
        )

    def _redact(self, text: str) -> str:
        """Remove the API key (and bearer token) from text that came from outside (an
        echoing proxy...)."""
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "[redacted]")
        return text

    async def _walk_pages(
        self, limit: int | None, before_id: str | None, after_id: str | None
    ) -> AsyncGenerator[MessageBatch]:
        # Like the SDK: a walk that started with before_id goes on towards newer
        # batches with before_id=first_id, any other with after_id=last_id.
        backwards = before_id is not None
        while True:
            page = await self.list_batches_page(limit=limit, before_id=before_id, after_id=after_id)
            for batch in page.data:
                yield batch
            if not page.has_more or not page.data:
                return
            if backwards:
                before_id, after_id = page.first_id, None
                cursor = before_id
            else:
                after_id = page.last_id
                cursor = after_id
            if cursor is None:
                return

    async def _stream_lines(
        self, batch_id: str, url: str, split: Splitter[_T]
    ) -> AsyncGenerator[_T]:
        # Not inside a cancel scope or task group: yielding here is safe. The
        # response is closed in ``finally`` (shielded), so an ``aclose()`` of this
        # generator, an error or a cancellation always release the connection. The
        # whole lines received before a break are yielded before the error.
        response = await self._open_results(url)
        received = 0
        broken: httpx.RequestError | None = None
        try:
            try:
                async for chunk in response.aiter_bytes():
                    received += len(chunk)
                    lines = split.feed(chunk)
                    if lines:
                        yield lines
            except httpx.RequestError as exc:
                broken = exc
        finally:
            with anyio.CancelScope(shield=True):
                await response.aclose()
        last = split.flush() if broken is None else split.whole()
        if last:
            yield last
        if broken is not None:
            reason = f"download broke after {received} bytes: {_retry.describe(broken)}"
            raise ResultStreamError(batch_id, self._redact(reason)) from broken

    async def _open_results(self, url: str) -> httpx.Response:
        """GET the results URL, with retries, and return the open streamed response."""
        self._check_usable()
        for retries_taken in range(self._max_retries + 1):
            last = retries_taken == self._max_retries
            request = self._http.build_request("GET", url, headers=_BINARY)
            try:
                response = await self._http.send(request, stream=True)
            except httpx.RequestError as exc:
                if last or not _retry.retryable_transport_error(exc):
                    raise self._connection_error("GET", url, exc) from exc
                await self._backoff("GET", url, retries_taken, None, _retry.describe(exc))
                continue
            if response.is_success:
                return response
            try:
                await response.aread()
            except httpx.TransportError:
                pass  # the status is what matters; the body is only the message
            finally:
                await response.aclose()
            if last or not _retry.retryable_status(response):
                raise self._status_error("GET", url, response)
            reason = f"status {response.status_code}"
            await self._backoff("GET", url, retries_taken, response.headers, reason)
        raise AssertionError("unreachable")  # pragma: no cover

    async def _decode_results(
        self, batch_id: str, chunks: AsyncGenerator[list[bytes]]
    ) -> AsyncGenerator[ResultLine]:
        decode = RESULT_LINE_DECODER.decode
        try:
            async for lines in chunks:
                for line in lines:
                    try:
                        result = decode(line)
                    except msgspec.DecodeError as exc:
                        raise ResultStreamError(batch_id, f"invalid result line: {exc}") from exc
                    yield result
        finally:
            # Close the download now, not when the inner generator is collected.
            with anyio.CancelScope(shield=True):
                await chunks.aclose()


def check_secret(value: str | None, name: str) -> None:
    """``UsageError`` when ``value`` (an API key or bearer token; None: not given) cannot
    be sent as written, saying what is wrong with it and showing none of it. ``name``
    says where it came from (``the API key in ANTHROPIC_API_KEY``)."""
    if value is None:
        return
    problem = secret_problem(value)
    if problem is not None:
        raise UsageError(f"{name} {problem} (the value is not shown)")


def check_base_url(value: str | None, name: str) -> None:
    """``UsageError`` when ``value`` (None: not given) is not a usable base URL of the
    API (see ``pipeline._config.base_url_problem``)."""
    if value is None:
        return
    problem = base_url_problem(value)
    if problem is not None:
        raise UsageError(f"{name} {problem}")


def check_environment(
    api_key_env: str, *, api_key: str | None = None, base_url: str | None = None
) -> None:
    """Check what a pipeline would take from the environment, as it would take it (a
    key in ``api_key_env`` unless ``api_key`` is given, else a bearer token in
    ``ANTHROPIC_AUTH_TOKEN``; a base URL in ``ANTHROPIC_BASE_URL`` unless ``base_url``
    is given), before anything starts: ``UsageError`` naming the variable."""
    if api_key is None:
        key = os.environ.get(api_key_env) or None
        check_secret(key, f"the API key in {api_key_env}")
        if key is None:
            token = os.environ.get(AUTH_TOKEN_ENV) or None
            check_secret(token, f"the bearer token in {AUTH_TOKEN_ENV}")
    if base_url is None:
        check_base_url(os.environ.get(BASE_URL_ENV) or None, f"the base URL in {BASE_URL_ENV}")


def _batch_path(batch_id: str) -> str:
    """``/v1/messages/batches/{id}``, refusing ids that would change the path."""
    if not batch_id or batch_id in {".", ".."} or batch_id.startswith(";"):
        raise ValueError(f"invalid batch id {batch_id!r}")
    return "/v1/messages/batches/" + quote(batch_id, safe="")
