"""The calls of the dry-run stage (``pipeline.stages.dryrun``), apart from its
bookkeeping of shapes and held entries: the request body of each probe, the pace of
the calls, and what an error answer means.

A probe sends the entry's own params, cut to what its endpoint takes: to
``count_tokens`` only the fields that make up the input (no ``max_tokens``, sampling
fields or metadata), to ``messages`` all of them but with a ``max_tokens`` and a
thinking budget so small that the probe costs a few tokens. The fields are spliced
through as raw JSON, so the service judges them exactly as the batch would send them.

An error answer is a verdict on the request only when it is about the request (a 400,
413 or 422, or a 404 whose message names a request field); a 401, 403 or other 404 is
about the deployment and would condemn every request alike, so the stage fails with
the service's error, its message extended by a hint of what to check.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

import anyio
import msgspec
from msgspec import UNSET, Raw, UnsetType

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from .._errors import APIStatusError

__all__ = (
    "COUNT_TOKENS_PATH",
    "DRY_RUN_MAX_TOKENS",
    "DRY_RUN_THINKING_BUDGET",
    "REQUEST_FAULTS",
    "RateLimiter",
    "count_tokens_body",
    "is_setup_fault",
    "messages_body",
    "setup_error",
)

#: ``max_tokens`` of a ``messages`` dry run (with thinking: the probe budget + 1).
DRY_RUN_MAX_TOKENS = 1
#: The smallest ``thinking.budget_tokens`` the Messages API allows: a ``messages`` dry
#: run of a thinking request thinks at most this much.
DRY_RUN_THINKING_BUDGET = 1024
#: HTTP statuses that condemn the request itself; other errors (overload after the
#: client's retries, no connection) fail the stage: no verdict can be reached.
REQUEST_FAULTS = frozenset({400, 404, 413, 422})
#: A message that names a request field (``model: claude-x``, ``messages.0.content``):
#: the service's way of refusing one request, as opposed to a missing endpoint.
_FIELD_MESSAGE = re.compile(r"^[a-z_][a-z0-9_]*(?:\.[a-z0-9_]+)*: ")
COUNT_TOKENS_PATH = "/v1/messages/count_tokens"
_SETUP_HINTS = {
    401: "the service refused the API key: check the variable --api-key-env names "
    "(default ANTHROPIC_API_KEY) and that --base-url is the service the key is for",
    403: "the API key may not use this endpoint or workspace: check the key "
    "(--api-key-env) and --base-url",
    404: "no such endpoint at this base URL: check --base-url (the API root, e.g. "
    "https://api.anthropic.com, with no path after it), or choose another --dry-run "
    "mode if this service lacks the endpoint",
}


# -------------------------------------------------------------------- request bodies


class _EntryView(msgspec.Struct):
    params: Raw


class _CountTokensView(msgspec.Struct, omit_defaults=True):
    """The fields ``count_tokens`` accepts, spliced through as raw JSON."""

    model: Raw
    messages: Raw
    system: Raw = Raw()
    tools: Raw = Raw()
    tool_choice: Raw = Raw()
    thinking: Raw = Raw()
    cache_control: Raw = Raw()
    output_config: Raw = Raw()
    speed: Raw = Raw()
    mcp_servers: Raw = Raw()
    context_management: Raw = Raw()


class _Thinking(msgspec.Struct):
    type: str
    budget_tokens: int | UnsetType = UNSET


_entry_view = msgspec.json.Decoder(_EntryView)
_count_view = msgspec.json.Decoder(_CountTokensView)
_fields_view = msgspec.json.Decoder(dict[str, Raw])
_thinking_view = msgspec.json.Decoder(_Thinking)
_encoder = msgspec.json.Encoder()


def count_tokens_body(raw: bytes) -> bytes:
    """The ``count_tokens`` body of a batch entry: its params minus ``max_tokens``
    and the other fields that endpoint refuses."""
    return _encoder.encode(_count_view.decode(_entry_view.decode(raw).params))


def messages_body(raw: bytes, max_tokens: int = DRY_RUN_MAX_TOKENS) -> bytes:
    """The ``/v1/messages`` body of a batch entry: its own params with a tiny
    ``max_tokens``. With extended thinking on, the budget drops to the smallest the
    API allows (``DRY_RUN_THINKING_BUDGET``) and ``max_tokens`` to just above it, so
    the probe never pays for the request's own, possibly large, budget."""
    fields = _fields_view.decode(_entry_view.decode(raw).params)
    fields.pop("stream", None)
    limit = max_tokens
    if "thinking" in fields:
        thinking = _thinking_view.decode(fields["thinking"])
        if thinking.type == "enabled" and thinking.budget_tokens is not UNSET:
            # a budget below the minimum is left as sent: the service refuses it
            budget = min(thinking.budget_tokens, DRY_RUN_THINKING_BUDGET)
            thinking_fields = _fields_view.decode(fields["thinking"])
            thinking_fields["budget_tokens"] = Raw(str(budget).encode())
            fields["thinking"] = Raw(_encoder.encode(thinking_fields))
            limit = max(limit, budget + 1)
    fields["max_tokens"] = Raw(str(limit).encode())
    return _encoder.encode(fields)


# ------------------------------------------------------------------- pace and verdicts


class RateLimiter:
    """At most ``rate`` acquisitions per second: each caller reserves the next free
    slot ``1/rate`` after the previous one, then sleeps until it (a token bucket of
    depth one, so no burst ever goes over the rate)."""

    def __init__(
        self, rate: float, clock: Callable[[], float], sleep: Callable[[float], Awaitable[None]]
    ) -> None:
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._next = float("-inf")

    async def acquire(self) -> None:
        now = self._clock()
        slot = max(now, self._next)
        self._next = slot + self._interval
        if slot > now:
            await self._sleep(slot - now)
        else:
            await anyio.lowlevel.checkpoint()


def is_setup_fault(exc: APIStatusError) -> bool:
    """Whether an error answer is about the deployment, not the request: auth, or a
    404 that does not name a request field (``model: ...`` names one)."""
    if exc.status_code == 404:
        return _FIELD_MESSAGE.match(exc.api_message) is None
    return exc.status_code in (401, 403)


def setup_error(exc: APIStatusError, endpoint: str) -> APIStatusError:
    """``exc`` again (same class and context) with a message naming the dry run's
    ``endpoint`` and what to check. The client already redacted the API key from the
    service's message, and no key is added here."""
    hint = _SETUP_HINTS[exc.status_code]
    return type(exc)(
        status_code=exc.status_code,
        error_type=exc.error_type,
        message=f"{exc.api_message}; the dry run's {endpoint} call failed, {hint}",
        request_id=exc.request_id,
        method=exc.method,
        url=exc.url,
    )
