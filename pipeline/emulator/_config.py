"""Emulator configuration and the injectable clocks.

Every knob has a named ``DEFAULT_*`` value; the defaults reproduce the documented
service (10,000 requests or 32 MiB per batch, 24 h expiry, 29 days of results) except
``batch_seconds``, which is short so that a local job finishes in seconds.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

import msgspec

from pipeline.api._schema import KNOWN_MODELS, without_fields

__all__ = (
    "DEFAULT_BATCH_SECONDS",
    "DEFAULT_EXPIRY_SECONDS",
    "DEFAULT_HEADER_TIMEOUT_SECONDS",
    "DEFAULT_KEEP_ALIVE_SECONDS",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_BATCH_REQUESTS",
    "DEFAULT_MAX_MESSAGE_BYTES",
    "DEFAULT_PROMPT_CACHE_ENTRIES",
    "DEFAULT_RETENTION_SECONDS",
    "DEFAULT_SLOW_SECONDS",
    "EmulatorConfig",
    "ManualClock",
)

DEFAULT_MAX_BATCH_REQUESTS = 10_000
DEFAULT_MAX_BATCH_BYTES = 32 * 1024 * 1024
DEFAULT_MAX_MESSAGE_BYTES = 32 * 1024 * 1024
DEFAULT_BATCH_SECONDS = 1.0
DEFAULT_EXPIRY_SECONDS = 24 * 3600.0
DEFAULT_RETENTION_SECONDS = 29 * 24 * 3600.0
DEFAULT_SLOW_SECONDS = 0.5
#: How long a connection may take to send a request's headers (from connecting, or
#: from the first byte of a later request) before the server closes it.
DEFAULT_HEADER_TIMEOUT_SECONDS = 20.0
#: How long an idle keep-alive connection stays open (uvicorn's ``timeout_keep_alive``);
#: long enough that a polling client's pooled connections are not closed under it
#: between polls (uvicorn's default is 5 s).
DEFAULT_KEEP_ALIVE_SECONDS = 75
#: Prompt-cache prefixes remembered (a 16-byte digest and two times each, ~150 bytes)
DEFAULT_PROMPT_CACHE_ENTRIES = 100_000
#: The start of a ManualClock: a fixed instant, so timestamps in tests are stable.
DEFAULT_MANUAL_START = 1_750_000_000.0


class ManualClock:
    """A clock that moves only when told to: ``advance(seconds)`` or ``set(now)``.

    Pass it as ``EmulatorConfig(clock=ManualClock())`` to test a 24-hour expiry or a
    29-day retention in virtual time.
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = DEFAULT_MANUAL_START) -> None:
        self._now = float(start)

    def __call__(self) -> float:
        return self._now

    def advance(self, seconds: float) -> float:
        """Move forward by ``seconds`` (never backward); return the new time."""
        if seconds < 0:
            raise ValueError("a clock cannot go backward")
        self._now += seconds
        return self._now

    def set(self, now: float) -> None:
        """Jump to ``now`` (not earlier than the current time)."""
        if now < self._now:
            raise ValueError("a clock cannot go backward")
        self._now = float(now)

    def __repr__(self) -> str:
        return f"ManualClock({self._now!r})"


def _rate(name: str, value: float) -> None:
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"{name} must be within 0..1, got {value!r}")


def _non_negative(name: str, value: float) -> None:
    if value < 0:
        raise ValueError(f"{name} must be >= 0, got {value!r}")


class EmulatorConfig(msgspec.Struct, frozen=True, kw_only=True):
    """How the emulator behaves: limits, timing, fault injection, workspaces.

    ``clock`` returns the current time in seconds since the epoch (default
    ``time.time``); pass a :class:`ManualClock` to control time in tests.
    ``models`` is the set of accepted model names (``None`` accepts any); by default
    the models the service is known to accept (``KNOWN_MODELS``).
    ``workspaces`` maps an API key to a workspace name; keys not listed each get a
    workspace of their own.
    """

    max_batch_requests: int = DEFAULT_MAX_BATCH_REQUESTS
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES
    #: how long a batch stays ``in_progress``; 0 ends it at the first look
    batch_seconds: float = DEFAULT_BATCH_SECONDS
    #: how long a batch stays ``canceling`` after a cancel; 0 ends it at the next look
    cancel_seconds: float = 0.0
    expiry_seconds: float = DEFAULT_EXPIRY_SECONDS
    retention_seconds: float = DEFAULT_RETENTION_SECONDS
    #: fraction of processed requests that end ``errored`` with ``api_error``
    request_error_rate: float = 0.0
    #: fraction of API answers replaced by a 429, 500 or 529
    fault_rate: float = 0.0
    #: fraction of API answers delayed by ``slow_seconds``
    slow_rate: float = 0.0
    slow_seconds: float = DEFAULT_SLOW_SECONDS
    #: fraction of results downloads cut off in the middle of the body
    cut_rate: float = 0.0
    #: fraction of streamed Messages answers that break off with an ``error`` event
    #: (``overloaded_error``) after their first content block, as the service's do
    stream_error_rate: float = 0.0
    #: the ``retry-after`` a 429 carries, in seconds
    retry_after_seconds: float = 0.0
    seed: int = 0
    models: frozenset[str] | None = KNOWN_MODELS
    #: top-level params taken unchecked: fields the service added after this version
    #: (``PipelineConfig.allow_fields``; the embedded emulator takes the job's)
    allow_fields: frozenset[str] = frozenset()
    workspaces: Mapping[str, str] = {}
    clock: Callable[[], float] | None = None
    #: a connection that has not sent a request's headers this long after connecting
    #: (or after the first byte of a later request) is closed: slow clients cannot
    #: hold sockets forever
    header_timeout_seconds: float = DEFAULT_HEADER_TIMEOUT_SECONDS
    #: an idle keep-alive connection is closed after this many seconds
    keep_alive_seconds: int = DEFAULT_KEEP_ALIVE_SECONDS
    #: prefixes the prompt cache remembers, least recently used dropped first
    prompt_cache_entries: int = DEFAULT_PROMPT_CACHE_ENTRIES

    def __post_init__(self) -> None:
        if self.max_batch_requests < 1:
            raise ValueError("max_batch_requests must be >= 1")
        if self.max_batch_bytes < 1 or self.max_message_bytes < 1:
            raise ValueError("max_batch_bytes and max_message_bytes must be >= 1")
        for name in ("batch_seconds", "cancel_seconds", "slow_seconds", "retry_after_seconds"):
            _non_negative(name, getattr(self, name))
        for name in ("expiry_seconds", "retention_seconds", "header_timeout_seconds"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        if self.keep_alive_seconds < 1:
            raise ValueError(f"keep_alive_seconds must be >= 1, got {self.keep_alive_seconds!r}")
        for name in (
            "request_error_rate",
            "fault_rate",
            "slow_rate",
            "cut_rate",
            "stream_error_rate",
        ):
            _rate(name, getattr(self, name))
        if self.prompt_cache_entries < 0:
            raise ValueError("prompt_cache_entries must be >= 0")

    def now(self) -> float:
        """The current time by the configured clock."""
        return (self.clock or time.time)()

    def without_allowed(self, params: bytes) -> bytes:
        """``params`` (a JSON object) without the top-level ``allow_fields`` it has, for
        the strict checks; as it is when it has none (the common case: no decode)."""
        return without_fields(params, self.allow_fields)[0]
