"""The emulator's raw ASGI application: routing, auth, limits, faults and answers.

No web framework: the few routes are matched by hand, bodies are drained with a
byte limit (the service's 413 comes only after the whole body was read, see
API_CONTRACT.md section 13), and every answer carries a ``request-id`` header. What
the headers alone decide (no API key, no ``anthropic-version``, a body that is not
JSON) is answered before the body is read. A streamed Messages answer is sent as
server-sent events (``_stream``); the models are the catalogue's (``_catalog``).
Errors use the service's envelope (``pipeline.api._types.error_body``) and the
status of its type (``ERROR_STATUS``).
"""

from __future__ import annotations

import codecs
import hashlib
import itertools
import logging
import os
import random
import re
import secrets
from collections.abc import Awaitable, Callable, MutableMapping
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, unquote

import anyio
import msgspec

from pipeline._asgi_server import answer_lifespan
from pipeline.api._schema import check_params, decode_error_message
from pipeline.api._types import (
    ERROR_STATUS,
    CountTokensParams,
    DeletedMessageBatch,
    MessageBatch,
    MessageBatchList,
    MessageCreateParams,
    ModelList,
    ThinkingEnabled,
    error_body,
)

from ._config import EmulatorConfig, ManualClock
from ._model import count_input_tokens, respond
from ._store import NESTED_TOO_DEEPLY, CreateError, Store
from ._stream import CONTENT_TYPE as SSE_CONTENT_TYPE
from ._stream import error_event, message_events

if TYPE_CHECKING:
    from pathlib import Path

    from ._store import BatchRecord

__all__ = ("ASGIApp", "CutConnection", "EmulatorApp", "create_app")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_log = logging.getLogger("pipeline.emulator")
_BATCHES = "/v1/messages/batches"
_SMALL_BODY = 1 << 20
_CHUNK = 1 << 20
_encoder = msgspec.json.Encoder()
_messages_decoder = msgspec.json.Decoder(MessageCreateParams)
_count_decoder = msgspec.json.Decoder(CountTokensParams)
_JSON = (b"content-type", b"application/json")
_MODELS = "/v1/models"
#: An ``anthropic-version`` the emulator takes: any date, as every SDK sends one.
_VERSION = re.compile(rb"^\d{4}-\d{2}-\d{2}$")
#: The media types a request body may be sent as (``Content-Type``, parameters aside).
_JSON_TYPES = frozenset({b"application/json"})
_LIFECYCLES = frozenset({"active", "deprecated", "retired"})
_STREAM_FAULT = "Overloaded (injected by the emulator)"
#: ``GET /v1/models`` without a ``lifecycle`` filter: retired models are left out
_DEFAULT_LIFECYCLES = frozenset({"active", "deprecated"})


class CutConnection(Exception):
    """Raised inside a results download to drop the connection (fault injection)."""


class _Answer(Exception):
    """A finished answer, raised from deep inside a handler (errors mostly)."""

    def __init__(
        self,
        status: int,
        body: bytes = b"",
        headers: list[tuple[bytes, bytes]] | None = None,
        error: tuple[str, str] | None = None,
    ) -> None:
        super().__init__(status)
        self.status = status
        self.body = body
        self.headers = headers or []
        self.error = error


def _error(
    error_type: str, message: str, headers: list[tuple[bytes, bytes]] | None = None
) -> _Answer:
    """An error answer; its envelope (with the request id) is built when it is sent."""
    return _Answer(ERROR_STATUS.get(error_type, 400), headers=headers, error=(error_type, message))


class _Request:
    """The parts of an HTTP request the handlers use."""

    __slots__ = ("body", "headers", "method", "path", "query", "scope", "too_large")

    def __init__(self, scope: Scope) -> None:
        self.scope = scope
        self.method: str = scope["method"]
        self.path: str = scope["path"]
        self.headers: dict[bytes, bytes] = {k.lower(): v for k, v in scope.get("headers", [])}
        self.query: dict[str, list[str]] = parse_qs(
            scope.get("query_string", b"").decode("latin-1")
        )
        self.body = b""
        self.too_large = False

    def base_url(self) -> str:
        host = self.headers.get(b"host")
        if host:
            authority = host.decode("latin-1")
        else:
            server = self.scope.get("server") or ("127.0.0.1", 80)
            authority = f"{server[0]}:{server[1]}"
        return f"{self.scope.get('scheme', 'http')}://{authority}"

    def api_key(self) -> str | None:
        key = self.headers.get(b"x-api-key")
        if key:
            return key.decode("latin-1")
        auth = self.headers.get(b"authorization", b"")
        scheme, _, token = auth.partition(b" ")
        if scheme.lower() == b"bearer" and token.strip():
            return token.strip().decode("latin-1")
        return None


async def _drain(receive: Receive, limit: int) -> tuple[bytes, bool]:
    """Read the whole body; keep at most ``limit`` bytes. Returns (body, too_large)."""
    chunks: list[bytes] = []
    size = 0
    too_large = False
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunk: bytes = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            too_large = True
            chunks.clear()
        elif chunk:
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks), too_large


def _decode(decoder: msgspec.json.Decoder[Any], body: bytes) -> Any:
    """``body`` decoded, or the service's 400 naming what is wrong with it."""
    try:
        return decoder.decode(body)
    except msgspec.DecodeError as exc:
        raise _error("invalid_request_error", decode_error_message(exc)) from None
    except RecursionError:
        raise _error("invalid_request_error", NESTED_TOO_DEEPLY) from None


def _check_utf8(body: bytes) -> None:
    """Refuse a body that is not UTF-8, as the service does (a JSON text must be).
    Checked a chunk at a time: the text of a 32 MB body is never held whole."""
    decoder = codecs.getincrementaldecoder("utf-8")()
    view = memoryview(body)
    for start in range(0, len(body), _CHUNK):
        try:
            decoder.decode(view[start : start + _CHUNK], final=start + _CHUNK >= len(body))
        except UnicodeDecodeError as exc:
            raise _error(
                "invalid_request_error",
                f"The request body is not valid JSON: invalid UTF-8 near byte {start + exc.start}",
            ) from None


class EmulatorApp:
    """The ASGI app. ``state`` is the Store (batches, submissions) for assertions."""

    def __init__(self, config: EmulatorConfig | None = None, data_dir: str | Path | None = None):
        self.config = config or EmulatorConfig()
        self.state = Store(self.config, data_dir)
        seed = self.config.seed
        self._fault_rng = random.Random(f"{seed}:fault")
        self._slow_rng = random.Random(f"{seed}:slow")
        self._cut_rng = random.Random(f"{seed}:cut")
        self._stream_rng = random.Random(f"{seed}:stream")
        self._req_prefix = secrets.token_hex(6)
        self._req_counter = itertools.count(1)
        self._workspaces = dict(self.config.workspaces)

    def close(self) -> None:
        """Release the store's files (removes a temporary data directory)."""
        self.state.close()

    # ----------------------------------------------------------------- plumbing

    def _request_id(self) -> str:
        return f"req_{self._req_prefix}{next(self._req_counter):012x}"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await answer_lifespan(receive, send)
            return
        if scope["type"] != "http":
            return
        request = _Request(scope)
        request_id = self._request_id()
        started = False

        async def tracked_send(message: Message) -> None:
            nonlocal started
            started = True
            await send(message)

        try:
            answer = await self._handle(request, receive, tracked_send, request_id)
        except _Answer as exc:
            answer = exc
        except Exception:
            if started:
                raise  # mid-stream (e.g. an injected cut): the connection must drop
            _log.exception("emulator error on %s %s", request.method, request.path)
            answer = _error("api_error", "Internal error in the emulator")
        if answer is not None:
            await self._send(send, answer, request_id)

    @staticmethod
    async def _send(send: Send, answer: _Answer, request_id: str) -> None:
        body = answer.body
        if answer.error is not None:
            body = error_body(*answer.error, request_id=request_id)
        headers = [
            (b"content-length", str(len(body)).encode()),
            (b"request-id", request_id.encode()),
            *answer.headers,
        ]
        if not any(name == b"content-type" for name, _ in answer.headers):
            headers.append(_JSON)
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _body_limit(self, request: _Request) -> int:
        if request.path == _BATCHES:
            return self.config.max_batch_bytes
        if request.path.startswith("/v1/messages") and not request.path.startswith(_BATCHES):
            return self.config.max_message_bytes
        return _SMALL_BODY

    async def _handle(
        self, request: _Request, receive: Receive, send: Send, request_id: str
    ) -> _Answer | None:
        api = request.path.startswith("/v1/")
        if api:
            # What the headers alone decide is answered before the body is read (the
            # server discards the rest of it): no key, no version, not JSON.
            workspace = self._workspace(request)
            self._check_headers(request)
        if request.method in ("POST", "PUT", "PATCH", "DELETE"):
            request.body, request.too_large = await _drain(receive, self._body_limit(request))
        if request.path.startswith("/_emulator/"):
            return await self._admin(request)
        if not api:
            raise _error("not_found_error", f"Not found: {request.method} {request.path}")
        if request.too_large:
            limit = self._body_limit(request)
            raise _error("request_too_large", f"Request exceeds the maximum size of {limit} bytes")
        if request.body and not request.body.isascii():
            _check_utf8(request.body)
        await self._maybe_slow()
        self._maybe_fault()
        return await self._route(request, workspace, send, request_id)

    @staticmethod
    def _check_headers(request: _Request) -> None:
        """``anthropic-version`` is required; a body must be sent as JSON."""
        version = request.headers.get(b"anthropic-version")
        if version is None:
            raise _error("invalid_request_error", "anthropic-version: header is required")
        if not _VERSION.match(version.strip()):
            raise _error(
                "invalid_request_error",
                f"anthropic-version: {version.decode('latin-1')!r} is not a valid version "
                "(a date, e.g. 2023-06-01)",
            )
        content_type = request.headers.get(b"content-type")
        if content_type is None or request.method not in ("POST", "PUT", "PATCH"):
            return
        media, *parameters = content_type.lower().split(b";")
        charsets = [p.strip()[8:].strip(b'"') for p in parameters if p.strip()[:8] == b"charset="]
        if media.strip() not in _JSON_TYPES or any(c != b"utf-8" for c in charsets):
            raise _error(
                "invalid_request_error",
                f"content-type: {content_type.decode('latin-1')!r} is not supported; "
                "send the body as application/json",
            )

    def _workspace(self, request: _Request) -> str:
        key = request.api_key()
        if key is None:
            raise _error(
                "authentication_error",
                "Missing API key: send it in the x-api-key header (or Authorization: Bearer)",
            )
        name = self._workspaces.get(key)
        if name is None:
            return "key:" + hashlib.sha256(key.encode()).hexdigest()[:24]
        asked = request.headers.get(b"anthropic-workspace-id")
        if asked is not None and asked.decode("latin-1") != name:
            raise _error("permission_error", "This API key cannot access the requested workspace")
        return f"ws:{name}"

    async def _maybe_slow(self) -> None:
        cfg = self.config
        if cfg.slow_rate and self._slow_rng.random() < cfg.slow_rate:
            await anyio.sleep(cfg.slow_seconds)

    def _maybe_fault(self) -> None:
        cfg = self.config
        if not cfg.fault_rate or self._fault_rng.random() >= cfg.fault_rate:
            return
        kind = self._fault_rng.choice(("rate_limit_error", "api_error", "overloaded_error"))
        if kind == "rate_limit_error":
            after = cfg.retry_after_seconds
            headers = [
                (b"retry-after", str(int(after + 0.999)).encode()),
                (b"retry-after-ms", str(int(after * 1000)).encode()),
            ]
            raise _error(kind, "Rate limited (injected by the emulator)", headers)
        message = "Internal server error" if kind == "api_error" else "Overloaded"
        raise _error(kind, f"{message} (injected by the emulator)")

    # ----------------------------------------------------------------- routes

    async def _route(
        self, request: _Request, workspace: str, send: Send, request_id: str
    ) -> _Answer | None:
        method, path = request.method, request.path
        if path == "/v1/messages" and method == "POST":
            return await self._messages(request, workspace, send, request_id)
        if path == "/v1/messages/count_tokens" and method == "POST":
            return self._count_tokens(request)
        if path == _MODELS and method == "GET":
            return self._models(request)
        if path.startswith(_MODELS + "/") and method == "GET":
            name = unquote(path[len(_MODELS) + 1 :])
            info = self.state.catalog.get(name)
            if info is None:
                raise _error("not_found_error", f"model: {name}")
            return self._ok(info)
        if path == _BATCHES:
            if method == "POST":
                return await self._create(request, workspace)
            if method == "GET":
                return await self._list(request, workspace)
        elif path.startswith(_BATCHES + "/"):
            parts = path[len(_BATCHES) + 1 :].split("/")
            record = self.state.get(workspace, unquote(parts[0]))
            if record is not None and len(parts) <= 2:
                action = parts[1] if len(parts) == 2 else ""
                if action == "" and method == "GET":
                    return await self._retrieve(request, record)
                if action == "" and method == "DELETE":
                    return await self._delete(record)
                if action == "cancel" and method == "POST":
                    return await self._cancel(request, record)
                if action == "results" and method == "GET":
                    await self._results(record, send, request_id)
                    return None
            if record is None and len(parts) <= 2:
                raise _error("not_found_error", f"Message batch not found: {parts[0]!r}")
        raise _error("not_found_error", f"Not found: {method} {path}")

    def _ok(self, obj: object) -> _Answer:
        return _Answer(200, _encoder.encode(obj))

    def _batch(self, request: _Request, batch: MessageBatch) -> MessageBatch:
        if batch.processing_status == "ended":
            batch.results_url = f"{request.base_url()}{_BATCHES}/{batch.id}/results"
        return batch

    async def _create(self, request: _Request, workspace: str) -> _Answer:
        try:
            parsed = self.state.parse_create(request.body)
        except CreateError as exc:
            raise _error(exc.error_type, exc.message) from None
        record = await self.state.create(workspace, request.body, parsed)
        # The create answer is always in_progress, as the service's is.
        return self._ok(self.state.render(record, record.created, "in_progress"))

    async def _retrieve(self, request: _Request, record: BatchRecord) -> _Answer:
        return self._ok(self._batch(request, await self.state.look(record)))

    async def _list(self, request: _Request, workspace: str) -> _Answer:
        limit = self._limit(request)
        before = self._cursor(request, "before_id")
        after = self._cursor(request, "after_id")
        if before is not None and after is not None:
            raise _error("invalid_request_error", "before_id and after_id cannot both be given")
        records, has_more = self.state.page(workspace, limit, before, after)
        data = [self._batch(request, await self.state.look(r)) for r in records]
        page = MessageBatchList(
            data=data,
            has_more=has_more,
            first_id=data[0].id if data else None,
            last_id=data[-1].id if data else None,
        )
        return self._ok(page)

    @staticmethod
    def _limit(request: _Request) -> int:
        values = request.query.get("limit")
        if not values:
            return 20
        try:
            limit = int(values[-1])
        except ValueError:
            limit = 0
        if not 1 <= limit <= 1000:
            raise _error("invalid_request_error", "limit: must be an integer from 1 to 1000")
        return limit

    def _cursor(self, request: _Request, name: str) -> int | None:
        values = request.query.get(name)
        if not values:
            return None
        seq = self.state.cursor_seq(values[-1])
        if seq is None:
            raise _error("invalid_request_error", f"{name}: not a message batch id")
        return seq

    async def _cancel(self, request: _Request, record: BatchRecord) -> _Answer:
        current = await self.state.look(record)
        if current.processing_status == "ended":
            raise _error(
                "invalid_request_error",
                f"Message batch {record.id} has already ended and can no longer be canceled",
            )
        self.state.cancel(record)
        return self._ok(self.state.render(record, self.state.now(), "canceling"))

    async def _delete(self, record: BatchRecord) -> _Answer:
        current = await self.state.look(record)
        if current.processing_status != "ended":
            raise _error(
                "invalid_request_error",
                f"Message batch {record.id} is still {current.processing_status}; "
                "only an ended batch can be deleted (cancel it first)",
            )
        self.state.delete(record)
        return self._ok(DeletedMessageBatch(id=record.id))

    async def _results(self, record: BatchRecord, send: Send, request_id: str) -> None:
        current = await self.state.look(record)
        if current.processing_status != "ended":
            raise _error(
                "invalid_request_error",
                f"Message batch {record.id} has not ended yet; its results are not available",
            )
        path = record.results_path
        if path is None or self.state.is_archived(record):
            raise _error(
                "not_found_error",
                f"The results of message batch {record.id} are no longer available: they were "
                f"archived at {current.archived_at} (results are kept for "
                f"{self.config.retention_seconds:g} s after creation)",
            )
        try:
            handle = path.open("rb")
        except FileNotFoundError:
            raise _error(
                "not_found_error", f"Results of {record.id} are no longer available"
            ) from None
        with handle:
            await self._stream(record, handle, send, request_id)

    async def _stream(self, record: BatchRecord, handle: Any, send: Send, request_id: str) -> None:
        size = record.results_size
        cfg = self.config
        cut_at = size
        if cfg.cut_rate and self._cut_rng.random() < cfg.cut_rate:
            cut_at = max(1, size // 2)
        headers = [
            (b"content-type", b"application/x-jsonl"),
            (
                b"content-disposition",
                f"attachment; filename*=utf-8''{record.id}_results.jsonl".encode(),
            ),
            (b"content-length", str(size).encode()),
            (b"request-id", request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        sent = 0
        while sent < cut_at:
            chunk = handle.read(min(_CHUNK, cut_at - sent))
            if not chunk:
                break
            sent += len(chunk)
            await send({"type": "http.response.body", "body": chunk, "more_body": sent < size})
        if sent < size:
            raise CutConnection(f"results download of {record.id} cut at byte {sent} (injected)")

    # ----------------------------------------------------------------- messages

    async def _messages(
        self, request: _Request, workspace: str, send: Send, request_id: str
    ) -> _Answer | None:
        body = self.config.without_allowed(request.body)
        params = _decode(_messages_decoder, body)
        self._known_model(params.model)
        stream = params.stream is True
        params.stream = msgspec.UNSET  # checked as the same request without it
        problem = check_params(params, models=None, raw=body)
        if problem is not None:
            raise _error("invalid_request_error", problem)
        cached = None
        if b'"cache_control"' in body:
            cached = self.state.cache.usage(params, workspace, self.config.now())
        # Named by the params as decoded (not the bytes sent): a streamed call and a
        # plain one answer the very same message.
        message = respond(params, _encoder.encode(params), service_tier="standard", cached=cached)
        if not stream:
            return self._ok(message)
        headers = [
            (b"content-type", SSE_CONTENT_TYPE),
            (b"cache-control", b"no-cache"),
            (b"request-id", request_id.encode()),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        rate = self.config.stream_error_rate
        broken = bool(rate) and self._stream_rng.random() < rate
        for event in message_events(message):
            await send({"type": "http.response.body", "body": event, "more_body": True})
            if broken and event.startswith(b"event: content_block_stop"):
                why = error_body("overloaded_error", _STREAM_FAULT, request_id)
                await send(
                    {"type": "http.response.body", "body": error_event(why), "more_body": True}
                )
                break
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return None

    def _known_model(self, model: str) -> None:
        """An unknown or retired model is ``404 not_found_error``, as on the service."""
        if not self.state.catalog.accepts(model):
            raise _error("not_found_error", f"model: {model}")

    def _models(self, request: _Request) -> _Answer:
        limit = self._limit(request)
        before = request.query.get("before_id", [None])[-1]
        after = request.query.get("after_id", [None])[-1]
        if before is not None and after is not None:
            raise _error("invalid_request_error", "before_id and after_id cannot both be given")
        asked = request.query.get("lifecycle[]", []) + request.query.get("lifecycle", [])
        if not set(asked) <= _LIFECYCLES:
            raise _error(
                "invalid_request_error",
                "lifecycle: each value must be one of active, deprecated, retired",
            )
        found = self.state.catalog.page(
            frozenset(asked) or _DEFAULT_LIFECYCLES, limit, before, after
        )
        if found is None:
            name = "before_id" if before is not None else "after_id"
            raise _error("invalid_request_error", f"{name}: not a model of the list")
        data, has_more = found
        first, last = (data[0].id, data[-1].id) if data else (None, None)
        return self._ok(ModelList(data=data, has_more=has_more, first_id=first, last_id=last))

    def _count_tokens(self, request: _Request) -> _Answer:
        body = self.config.without_allowed(request.body)
        params = _decode(_count_decoder, body)
        self._known_model(params.model)
        thinking = params.thinking
        as_create = MessageCreateParams(
            model=params.model,
            max_tokens=thinking.budget_tokens + 1 if isinstance(thinking, ThinkingEnabled) else 1,
            messages=params.messages,
            system=params.system,
            tools=params.tools,
            tool_choice=params.tool_choice,
            thinking=thinking,
        )
        problem = check_params(as_create, models=None, raw=body)
        if problem is not None:
            raise _error("invalid_request_error", problem)
        tokens = count_input_tokens(params.messages, params.system, params.tools)
        return self._ok({"input_tokens": tokens})

    # ----------------------------------------------------------------- admin

    async def _admin(self, request: _Request) -> _Answer:
        name = request.path[len("/_emulator/") :]
        if name == "health":
            return self._ok({"ok": True})
        if name == "submissions" and request.method == "GET":
            counts = self.state.submissions()
            if request.query.get("format") == ["jsonl"]:
                body = b"".join(
                    _encoder.encode({"custom_id": cid, "count": n}) + b"\n"
                    for cid, n in counts.items()
                )
                return _Answer(200, body, [(b"content-type", b"application/x-jsonl")])
            return self._ok(counts)
        if name == "stats" and request.method == "GET":
            return self._ok({**msgspec.structs.asdict(self.state.stats), **_memory()})
        if name == "advance" and request.method == "POST":
            clock = self.config.clock
            if not isinstance(clock, ManualClock):
                raise _error(
                    "invalid_request_error", "the emulator was not started with --manual-clock"
                )
            try:
                seconds = float(request.query.get("seconds", ["0"])[-1])
                now = clock.advance(seconds)
            except ValueError as exc:
                raise _error("invalid_request_error", f"seconds: {exc}") from None
            return self._ok({"now": now})
        raise _error("not_found_error", f"Not found: {request.method} {request.path}")


def _memory() -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of this process in KiB, where /proc exists."""
    out: dict[str, int] = {}
    try:
        with open(f"/proc/{os.getpid()}/status", "rb") as status:
            for line in status:
                if line.startswith((b"VmRSS:", b"VmHWM:")):
                    key, value = line.split(b":", 1)
                    out[key.decode().lower() + "_kib"] = int(value.split()[0])
    except OSError:
        pass
    return out


def create_app(
    config: EmulatorConfig | None = None, *, data_dir: str | Path | None = None
) -> EmulatorApp:
    """Build the emulator's ASGI app; ``data_dir`` defaults to a temp dir removed by
    ``close()``. A given ``data_dir`` keeps the batches across restarts: an app built on
    it again (after a ``close()`` or a kill) serves the batches created before."""
    return EmulatorApp(config, data_dir)
