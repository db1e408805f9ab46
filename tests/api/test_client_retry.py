"""Client retry, error and secrecy behaviour against ``httpx.MockTransport``, in virtual time."""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import msgspec
import pytest

from pipeline._errors import (
    APIConnectionError,
    APIError,
    APIStatusError,
    AuthenticationError,
    BadRequestError,
    CreateOutcomeUnknownError,
    InternalServerError,
    NotFoundError,
    OverloadedError,
    RateLimitError,
    RequestTooLargeError,
    UsageError,
)
from pipeline.api._client import Client
from pipeline.api._types import error_body

KEY = "sk-ant-SECRET-key-0123456789"
NOW = 1_700_000_000.0

BATCH = {
    "id": "msgbatch_1",
    "type": "message_batch",
    "processing_status": "in_progress",
    "request_counts": {"processing": 2, "succeeded": 0, "errored": 0, "canceled": 0, "expired": 0},
    "created_at": "2024-09-24T18:37:24.100435Z",
    "expires_at": "2024-09-25T18:37:24.100435Z",
    "ended_at": None,
    "cancel_initiated_at": None,
    "archived_at": None,
    "results_url": None,
}
BATCH_JSON = msgspec.json.encode(BATCH)

Step = httpx.Response | Exception | Callable[[httpx.Request], httpx.Response]


class Script:
    """A MockTransport handler answering each request with the next scripted step."""

    def __init__(self, *steps: Step) -> None:
        self.steps = list(steps)
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.steps.pop(0)
        if isinstance(step, Exception):
            raise step
        if isinstance(step, httpx.Response):
            return step
        return step(request)


class Sleeps:
    def __init__(self) -> None:
        self.delays: list[float] = []

    async def __call__(self, delay: float) -> None:
        self.delays.append(delay)


def ok(body: bytes = BATCH_JSON) -> httpx.Response:
    return httpx.Response(200, content=body, headers={"request-id": "req_ok"})


def err(status: int, error_type: str, message: str = "nope", **headers: str) -> httpx.Response:
    headers.setdefault("request-id", f"req_{status}")
    return httpx.Response(
        status,
        content=error_body(error_type, message),
        headers={k.replace("_", "-"): v for k, v in headers.items()},
    )


def make_client(script: Script, sleeps: Sleeps, **kwargs: object) -> Client:
    options: dict[str, object] = {
        "api_key": KEY,
        "base_url": "https://api.test",
        "transport": httpx.MockTransport(script),
        "sleep": sleeps,
        "random": lambda: 0.5,
        "clock": lambda: NOW,
        "max_retries": 4,
        "collect_after_create": False,
    }
    options.update(kwargs)
    return Client(**options)  # type: ignore[arg-type]


def assert_no_key(exc: BaseException) -> None:
    for text in (str(exc), repr(exc), repr(exc.args)):
        assert KEY not in text
    for value in vars(exc).values():
        assert KEY not in repr(value)


# -- the happy path and headers ---------------------------------------------------------


async def test_headers_and_decoding() -> None:
    script = Script(ok())
    async with make_client(
        script, Sleeps(), beta=True, extra_headers={"anthropic-workspace-id": "wrkspc_1"}
    ) as client:
        batch = await client.retrieve_batch("msgbatch_1")
    assert batch.id == "msgbatch_1"
    assert batch.request_counts.processing == 2
    (request,) = script.requests
    assert request.method == "GET"
    assert str(request.url) == "https://api.test/v1/messages/batches/msgbatch_1"
    assert request.headers["x-api-key"] == KEY
    assert request.headers["anthropic-version"] == "2023-06-01"
    assert request.headers["anthropic-beta"] == "message-batches-2024-09-24"
    assert request.headers["anthropic-workspace-id"] == "wrkspc_1"
    assert "content-type" not in request.headers
    assert "authorization" not in request.headers


async def test_post_body_sent_verbatim_with_content_type() -> None:
    script = Script(ok())
    body = b'{"requests":[{"custom_id":"a","params":{"model":"m","max_tokens":1,"messages":[],"x":1}}]}'
    async with make_client(script, Sleeps()) as client:
        await client.create_batch(body, request_count=1)
    (request,) = script.requests
    assert request.content == body
    assert request.headers["content-type"] == "application/json"
    assert "anthropic-beta" not in request.headers


async def test_no_key_sends_no_key_header() -> None:
    script = Script(ok())
    async with make_client(script, Sleeps(), api_key=None) as client:
        await client.retrieve_batch("msgbatch_1")
    assert "x-api-key" not in script.requests[0].headers
    assert "authorization" not in script.requests[0].headers


async def test_a_bearer_token_is_sent_as_the_sdk_sends_it_and_never_echoed() -> None:
    token = "gw-token-0123456789abcdef"
    echo = httpx.Response(401, content=error_body("authentication_error", f"bad token {token}"))
    script = Script(ok(), echo)
    async with make_client(script, Sleeps(), api_key=None, auth_token=token) as client:
        await client.retrieve_batch("msgbatch_1")
        with pytest.raises(APIError) as info:
            await client.retrieve_batch("msgbatch_1")  # an answer that echoes the token
    assert script.requests[0].headers["authorization"] == f"Bearer {token}"
    assert "x-api-key" not in script.requests[0].headers
    assert token not in str(info.value)
    assert token not in repr(info.value)
    assert "[redacted]" in str(info.value)


async def test_batch_id_is_percent_encoded_and_bad_ids_refused() -> None:
    script = Script(ok())
    async with make_client(script, Sleeps()) as client:
        await client.retrieve_batch("a/b c")
        for bad in ("", ".", ".."):
            with pytest.raises(ValueError, match="invalid batch id"):
                await client.retrieve_batch(bad)
    assert script.requests[0].url.raw_path == b"/v1/messages/batches/a%2Fb%20c"


# -- retry schedules ----------------------------------------------------------------------


async def test_429_retry_after_seconds_honoured_exactly() -> None:
    script = Script(err(429, "rate_limit_error", retry_after="3"), ok())
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        batch = await client.retrieve_batch("msgbatch_1")
    assert batch.id == "msgbatch_1"
    assert sleeps.delays == [3.0]
    assert len(script.requests) == 2
    assert client.retries == 1


async def test_retry_after_ms_preferred_over_retry_after() -> None:
    script = Script(err(429, "rate_limit_error", retry_after="7", retry_after_ms="250"), ok())
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        await client.retrieve_batch("msgbatch_1")
    assert sleeps.delays == [0.25]


async def test_retry_after_http_date() -> None:
    when = format_datetime(datetime.fromtimestamp(NOW + 12, UTC), usegmt=True)
    script = Script(err(503, "api_error", retry_after=when), ok())
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        await client.retrieve_batch("msgbatch_1")
    assert sleeps.delays == [12.0]


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ({"retry_after": "3600"}, 60.0),  # capped
        ({"retry_after": "0"}, 0.5 * 0.875),  # not positive: backoff
        ({"retry_after": "soon"}, 0.5 * 0.875),  # unparseable: backoff
        ({"retry_after_ms": "junk", "retry_after": "2"}, 2.0),  # falls back to seconds
    ],
)
async def test_retry_after_edge_cases(header: dict[str, str], expected: float) -> None:
    script = Script(err(429, "rate_limit_error", **header), ok())
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        await client.retrieve_batch("msgbatch_1")
    assert sleeps.delays == [expected]


async def test_backoff_schedule_exact_then_exhaustion_500() -> None:
    script = Script(*(err(500, "api_error", "boom") for _ in range(7)))
    sleeps = Sleeps()
    async with make_client(script, sleeps, max_retries=6) as client:
        with pytest.raises(InternalServerError) as info:
            await client.retrieve_batch("msgbatch_1")
    # min(0.5 * 2**n, 8) * (1 - 0.25 * 0.5)
    assert sleeps.delays == [0.4375, 0.875, 1.75, 3.5, 7.0, 7.0]
    assert len(script.requests) == 7
    exc = info.value
    assert exc.status_code == 500
    assert exc.error_type == "api_error"
    assert exc.api_message == "boom"
    assert exc.request_id == "req_500"
    assert "boom" in str(exc)
    assert "req_500" in str(exc)


async def test_jitter_uses_injected_random() -> None:
    values = iter([0.0, 1.0])
    script = Script(err(500, "api_error"), err(500, "api_error"), ok())
    sleeps = Sleeps()
    async with make_client(script, sleeps, random=lambda: next(values)) as client:
        await client.retrieve_batch("msgbatch_1")
    assert sleeps.delays == [0.5, 0.75]


async def test_529_overloaded_exhaustion() -> None:
    script = Script(*(err(529, "overloaded_error", "busy") for _ in range(3)))
    sleeps = Sleeps()
    async with make_client(script, sleeps, max_retries=2) as client:
        with pytest.raises(OverloadedError) as info:
            await client.retrieve_batch("msgbatch_1")
    assert isinstance(info.value, InternalServerError)
    assert info.value.error_type == "overloaded_error"
    assert sleeps.delays == [0.4375, 0.875]


async def test_429_exhaustion_raises_rate_limit_error() -> None:
    script = Script(*(err(429, "rate_limit_error", "slow down", retry_after="1") for _ in range(2)))
    sleeps = Sleeps()
    async with make_client(script, sleeps, max_retries=1) as client:
        with pytest.raises(RateLimitError) as info:
            await client.retrieve_batch("msgbatch_1")
    assert info.value.status_code == 429
    assert info.value.api_message == "slow down"
    assert sleeps.delays == [1.0]


@pytest.mark.parametrize("status", [408, 409, 502, 503, 504])
async def test_other_retryable_statuses(status: int) -> None:
    script = Script(httpx.Response(status, content=b""), ok())
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        await client.retrieve_batch("msgbatch_1")
    assert len(script.requests) == 2


@pytest.mark.parametrize(
    ("status", "error_type", "cls"),
    [
        (400, "invalid_request_error", BadRequestError),
        (401, "authentication_error", AuthenticationError),
        (404, "not_found_error", NotFoundError),
        (413, "request_too_large", RequestTooLargeError),
    ],
)
async def test_client_errors_not_retried(
    status: int, error_type: str, cls: type[APIStatusError]
) -> None:
    script = Script(err(status, error_type, "bad"), ok())
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        with pytest.raises(cls) as info:
            await client.retrieve_batch("msgbatch_1")
    assert info.value.status_code == status
    assert info.value.error_type == error_type
    assert len(script.requests) == 1
    assert sleeps.delays == []


async def test_x_should_retry_false_stops_retry() -> None:
    script = Script(err(500, "api_error", x_should_retry="false"), ok())
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        with pytest.raises(InternalServerError):
            await client.retrieve_batch("msgbatch_1")
    assert len(script.requests) == 1


async def test_x_should_retry_true_retries_a_400() -> None:
    script = Script(err(400, "invalid_request_error", x_should_retry="true"), ok())
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        await client.retrieve_batch("msgbatch_1")
    assert len(script.requests) == 2


async def test_max_retries_zero_means_one_attempt() -> None:
    script = Script(err(500, "api_error"), ok())
    async with make_client(script, Sleeps(), max_retries=0) as client:
        with pytest.raises(InternalServerError):
            await client.retrieve_batch("msgbatch_1")
    assert len(script.requests) == 1


async def test_non_json_error_body() -> None:
    script = Script(httpx.Response(502, content=b"<html>Bad Gateway</html>"))
    async with make_client(script, Sleeps(), max_retries=0) as client:
        with pytest.raises(InternalServerError) as info:
            await client.retrieve_batch("msgbatch_1")
    assert info.value.status_code == 502
    assert info.value.error_type == "api_error"
    assert "Bad Gateway" in info.value.api_message


async def test_unexpected_json_error_body_and_unknown_status() -> None:
    script = Script(httpx.Response(418, json={"detail": "teapot"}))
    async with make_client(script, Sleeps(), max_retries=0) as client:
        with pytest.raises(APIStatusError) as info:
            await client.retrieve_batch("msgbatch_1")
    assert type(info.value) is APIStatusError
    assert info.value.status_code == 418
    assert "teapot" in info.value.api_message


async def test_request_id_from_body_when_header_missing() -> None:
    response = httpx.Response(
        404, content=error_body("not_found_error", "no such batch", request_id="req_body")
    )
    async with make_client(Script(response), Sleeps()) as client:
        with pytest.raises(NotFoundError) as info:
            await client.retrieve_batch("msgbatch_x")
    assert info.value.request_id == "req_body"


async def test_connection_errors_retried_then_succeed() -> None:
    script = Script(
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
        ok(),
    )
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        await client.retrieve_batch("msgbatch_1")
    assert sleeps.delays == [0.4375, 0.875, 1.75]


async def test_connection_error_exhaustion_raises_api_connection_error() -> None:
    script = Script(*(httpx.ConnectError("refused") for _ in range(3)))
    async with make_client(script, Sleeps(), max_retries=2) as client:
        with pytest.raises(APIConnectionError) as info:
            await client.retrieve_batch("msgbatch_1")
    assert isinstance(info.value.__cause__, httpx.ConnectError)
    assert "ConnectError" in str(info.value)


async def test_invalid_success_body_is_an_api_error() -> None:
    async with make_client(Script(ok(b"not json")), Sleeps()) as client:
        with pytest.raises(APIError, match="invalid 200 answer"):
            await client.retrieve_batch("msgbatch_1")


# -- batch create: never re-sent when it may have happened -------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.ReadError("reset"),
        httpx.RemoteProtocolError("Server disconnected without sending a response."),
        httpx.WriteError("broken pipe"),
        httpx.WriteTimeout("write timed out"),
    ],
)
async def test_create_not_retried_after_send(failure: Exception) -> None:
    script = Script(failure, ok())
    sleeps = Sleeps()
    body = b'{"requests":[]}' * 10
    async with make_client(script, sleeps) as client:
        with pytest.raises(CreateOutcomeUnknownError) as info:
            await client.create_batch(body, request_count=7)
    assert len(script.requests) == 1
    assert sleeps.delays == []
    exc = info.value
    assert exc.request_count == 7
    assert exc.body_bytes == len(body)
    assert exc.sent_at == NOW
    assert type(failure).__name__ in str(exc)
    assert exc.__cause__ is failure
    assert_no_key(exc)


@pytest.mark.parametrize(
    "failure",
    [httpx.ConnectError("refused"), httpx.ConnectTimeout("t"), httpx.PoolTimeout("t")],
)
async def test_create_retried_on_connect_errors(failure: Exception) -> None:
    script = Script(failure, failure, ok())
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        batch = await client.create_batch(b"{}", request_count=1)
    assert batch.id == "msgbatch_1"
    assert len(script.requests) == 3
    assert sleeps.delays == [0.4375, 0.875]


async def test_create_retried_on_error_statuses() -> None:
    script = Script(
        err(429, "rate_limit_error", retry_after="2"),
        err(500, "api_error"),
        err(529, "overloaded_error"),
        ok(),
    )
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        await client.create_batch(b"{}", request_count=1)
    assert sleeps.delays == [2.0, 0.875, 1.75]
    assert len(script.requests) == 4


@pytest.mark.parametrize("status", [502, 504])
async def test_a_gateway_error_on_create_is_an_unknown_outcome(status: int) -> None:
    # the gateway lost the service's answer: the batch may exist, so no blind retry
    script = Script(httpx.Response(status, content=b"bad gateway"), ok())
    async with make_client(script, Sleeps()) as client:
        with pytest.raises(CreateOutcomeUnknownError, match=str(status)):
            await client.create_batch(b"{}", request_count=3)
    assert len(script.requests) == 1


async def test_create_connect_errors_exhausted() -> None:
    script = Script(*(httpx.ConnectError("refused") for _ in range(2)))
    async with make_client(script, Sleeps(), max_retries=1) as client:
        with pytest.raises(APIConnectionError):
            await client.create_batch(b"{}", request_count=1)


async def test_create_413_not_retried() -> None:
    script = Script(err(413, "request_too_large", "too big"), ok())
    async with make_client(script, Sleeps()) as client:
        with pytest.raises(RequestTooLargeError):
            await client.create_batch(b"{}", request_count=1)
    assert len(script.requests) == 1


async def test_create_unreadable_answer_is_unknown_outcome() -> None:
    async with make_client(Script(ok(b"{garbage")), Sleeps()) as client:
        with pytest.raises(CreateOutcomeUnknownError):
            await client.create_batch(b"{}", request_count=1)


async def test_collect_after_create_runs_gc(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[int] = []
    monkeypatch.setattr("pipeline.api._client.gc.collect", lambda: calls.append(1) or 0)
    async with make_client(Script(ok(), ok()), Sleeps(), collect_after_create=True) as client:
        await client.create_batch(b"{}", request_count=1)
        await client.retrieve_batch("msgbatch_1")
    assert calls == [1]


# -- messages and tokens ------------------------------------------------------------------


async def test_create_message_and_count_tokens_retried_like_reads() -> None:
    message = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-3-haiku-20240307",
        "content": [{"type": "text", "text": "hi", "citations": None}],
        "stop_reason": "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": 3, "output_tokens": 1},
    }
    script = Script(
        httpx.ReadTimeout("slow"),
        ok(msgspec.json.encode(message)),
        err(529, "overloaded_error"),
        ok(b'{"input_tokens": 42}'),
    )
    sleeps = Sleeps()
    async with make_client(script, sleeps) as client:
        got = await client.create_message(b'{"model":"m"}')
        tokens = await client.count_tokens(b'{"model":"m"}')
    assert got.content[0]["text"] == "hi"
    assert got.usage.input_tokens == 3
    assert tokens == 42
    assert [r.url.path for r in script.requests] == [
        "/v1/messages",
        "/v1/messages",
        "/v1/messages/count_tokens",
        "/v1/messages/count_tokens",
    ]
    assert script.requests[0].content == b'{"model":"m"}'


# -- secrecy ------------------------------------------------------------------------------


async def test_key_never_in_repr_errors_or_logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    echo = httpx.Response(401, content=error_body("authentication_error", f"bad key {KEY}"))
    script = Script(
        *(httpx.ConnectError(f"refused {KEY}") for _ in range(2)),
        echo,
        httpx.ReadError(f"reset {KEY}"),
        *(err(500, "api_error") for _ in range(2)),
    )
    client = make_client(script, Sleeps(), max_retries=1)
    assert KEY not in repr(client)
    assert KEY not in str(client)
    errors: list[BaseException] = []
    async with client:
        assert KEY not in repr(client)
        for call in (
            lambda: client.retrieve_batch("msgbatch_1"),
            lambda: client.retrieve_batch("msgbatch_1"),
            lambda: client.create_batch(b"{}", request_count=1),
            lambda: client.retrieve_batch("msgbatch_1"),
        ):
            with pytest.raises(APIError) as info:
                await call()
            errors.append(info.value)
    assert [type(e) for e in errors] == [
        APIConnectionError,
        AuthenticationError,
        CreateOutcomeUnknownError,
        InternalServerError,
    ]
    for exc in errors:
        assert_no_key(exc)
    assert "[redacted]" in str(errors[0])
    assert "[redacted]" in str(errors[1])
    assert "[redacted]" in str(errors[2])
    assert caplog.records, "retries are logged"
    for record in caplog.records:
        assert KEY not in record.getMessage()
    assert KEY not in caplog.text


# -- state --------------------------------------------------------------------------------


async def test_closed_client_raises_usage_error() -> None:
    client = make_client(Script(ok()), Sleeps())
    async with client:
        pass
    await client.aclose()  # idempotent
    assert "closed" in repr(client)
    with pytest.raises(UsageError):
        await client.retrieve_batch("msgbatch_1")
    with pytest.raises(UsageError):
        client.list_batches()
    with pytest.raises(UsageError):
        async with client:
            pass
    assert isinstance(UsageError("x"), RuntimeError)


async def test_unopened_client_works_and_double_open_refused() -> None:
    client = make_client(Script(ok()), Sleeps())
    assert "unopened" in repr(client)
    await client.retrieve_batch("msgbatch_1")
    async with client:
        with pytest.raises(UsageError):
            await client.__aenter__()
    assert "closed" in repr(client)


def test_constructor_validates() -> None:
    with pytest.raises(ValueError, match="max_retries"):
        Client(api_key=KEY, max_retries=-1)
    with pytest.raises(ValueError, match="max_connections"):
        Client(api_key=KEY, max_connections=0)
