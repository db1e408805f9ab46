"""How the client reads failures: which are retried, how long to wait, and what an
error answer says (its type, message and request id, envelope or not).

Pure functions with no I/O, so the schedule is testable without a transport. The
policy follows the official SDK (``_base_client.py``): ``x-should-retry`` wins, then
408 / 409 / 429 / 5xx; the wait is the service's ``retry-after-ms`` or ``retry-after``
when given (capped at ``MAX_RETRY_AFTER``), else exponential backoff with jitter.
"""

from __future__ import annotations

import datetime
import email.utils
from typing import TYPE_CHECKING

import httpx
import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = (
    "BACKOFF_BASE",
    "BACKOFF_CAP",
    "MAX_RETRY_AFTER",
    "backoff_delay",
    "create_not_sent",
    "describe",
    "parse_error",
    "retry_after_delay",
    "retry_delay",
    "retryable_status",
    "retryable_transport_error",
)

#: First backoff wait, doubled per retry taken, capped at ``BACKOFF_CAP``.
BACKOFF_BASE = 0.5
BACKOFF_CAP = 8.0
#: Longest wait the client accepts from ``retry-after`` / ``retry-after-ms``.
MAX_RETRY_AFTER = 60.0

_RETRY_STATUSES = frozenset({408, 409, 429})

# Failures after which the request certainly did not reach the service: no
# connection was made, or httpx refused to send it.
_NOT_SENT: tuple[type[Exception], ...] = (
    httpx.ConnectError,
    httpx.ConnectTimeout,
    httpx.PoolTimeout,
    httpx.UnsupportedProtocol,
)
# Failures that will happen again however often the request is retried.
_PERMANENT: tuple[type[Exception], ...] = (httpx.UnsupportedProtocol, httpx.LocalProtocolError)


def backoff_delay(retries_taken: int, random: Callable[[], float]) -> float:
    """``min(0.5 * 2**n, 8) * (1 - 0.25 * random())``: 0.5, 1, 2, 4, 8 s, minus jitter."""
    delay = min(BACKOFF_BASE * 2.0**retries_taken, BACKOFF_CAP)
    return delay * (1.0 - 0.25 * random())


def retry_after_delay(headers: httpx.Headers, now: float) -> float | None:
    """The wait the service asked for, in seconds, or None if it asked for none.

    ``retry-after-ms`` (float milliseconds) is preferred over ``retry-after`` (float
    seconds or an HTTP-date, relative to ``now``, a POSIX time). Waits that are not
    positive are ignored; long ones are capped at ``MAX_RETRY_AFTER``.
    """
    seconds: float | None = None
    raw_ms = headers.get("retry-after-ms")
    if raw_ms is not None:
        seconds = _float(raw_ms)
        seconds = None if seconds is None else seconds / 1000.0
    if seconds is None:
        raw = headers.get("retry-after")
        if raw is not None:
            seconds = _float(raw)
            if seconds is None:
                seconds = _http_date_delay(raw, now)
    if seconds is None or not seconds > 0.0:
        return None
    return min(seconds, MAX_RETRY_AFTER)


def retry_delay(
    headers: httpx.Headers | None, retries_taken: int, random: Callable[[], float], now: float
) -> float:
    """The wait before the next attempt: the service's, else the backoff."""
    asked = None if headers is None else retry_after_delay(headers, now)
    return asked if asked is not None else backoff_delay(retries_taken, random)


def retryable_status(response: httpx.Response) -> bool:
    """Whether an error answer is worth retrying (``x-should-retry`` first)."""
    should = response.headers.get("x-should-retry")
    if should == "true":
        return True
    if should == "false":
        return False
    return response.status_code in _RETRY_STATUSES or response.status_code >= 500


def retryable_transport_error(exc: Exception) -> bool:
    """Whether a transport failure may go away on a retry."""
    return isinstance(exc, httpx.TransportError) and not isinstance(exc, _PERMANENT)


def create_not_sent(exc: Exception) -> bool:
    """Whether a failed create certainly did not reach the service (safe to re-send).

    Conservative: anything after the connection was made (write errors, read
    timeouts, a dropped connection, a protocol error) may have created the batch.
    """
    return isinstance(exc, _NOT_SENT)


def _float(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if value == value else None  # NaN is no wait


def _http_date_delay(raw: str, now: float) -> float | None:
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # "-0000" means UTC with no zone information
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp() - now


# -- what an error answer says ------------------------------------------------------


class _ErrorDetail(msgspec.Struct):
    type: str = "api_error"
    message: str = ""


class _ErrorEnvelope(msgspec.Struct):
    """A lenient view of the error envelope: any JSON error body decodes."""

    error: _ErrorDetail | None = None
    request_id: str | None = None


_ERROR = msgspec.json.Decoder(_ErrorEnvelope)
#: Error type reported for an error answer whose body is not the service's envelope.
_STATUS_ERROR_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_MAX_ERROR_TEXT = 500


def describe(exc: BaseException) -> str:
    """``Type: message`` of an httpx error; never its request (which holds the key)."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def parse_error(response: httpx.Response) -> tuple[str, str, str | None]:
    """(error type, message, request id) of an error answer, JSON envelope or not."""
    body = response.content
    fallback_type = _STATUS_ERROR_TYPE.get(
        response.status_code, "api_error" if response.status_code >= 500 else "http_error"
    )
    try:
        envelope = _ERROR.decode(body)
    except msgspec.DecodeError:
        envelope = None
    if envelope is not None and envelope.error is not None:
        message = envelope.error.message or response.reason_phrase
        return envelope.error.type or fallback_type, message, envelope.request_id
    text = body.decode("utf-8", "replace").strip()[:_MAX_ERROR_TEXT]
    return fallback_type, text or response.reason_phrase or "(no body)", None
