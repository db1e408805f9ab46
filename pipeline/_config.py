"""Defaults and the pipeline's keyword-only configuration.

Every default is a named ``DEFAULT_*`` constant here, in one place. The batch
limits default to the documented values (10,000 requests / 32 MB per batch): a
batch within them is valid on the service today, which accepts up to 100,000
requests / 256 MB (``SERVICE_MAX_BATCH_REQUESTS`` / ``SERVICE_MAX_BATCH_BYTES``).
"""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

import msgspec

__all__ = (
    "DEFAULT_API_KEY_ENV",
    "DEFAULT_BASE_URL",
    "DEFAULT_BUDGET_ACTION",
    "DEFAULT_BUFFER_SIZE",
    "DEFAULT_CHUNK_BUFFER",
    "DEFAULT_DRY_RUN",
    "DEFAULT_DRY_RUN_POLICY",
    "DEFAULT_DRY_RUN_RATE",
    "DEFAULT_DRY_RUN_SAMPLES",
    "DEFAULT_LINGER_SECONDS",
    "DEFAULT_MAX_ATTEMPTS",
    "DEFAULT_MAX_BATCH_BYTES",
    "DEFAULT_MAX_BATCH_REQUESTS",
    "DEFAULT_MAX_CREATE_BACKOFF",
    "DEFAULT_MAX_IN_FLIGHT",
    "DEFAULT_MAX_POLL_INTERVAL",
    "DEFAULT_POLL_INTERVAL",
    "LOW_MEMORY_ABOVE_BYTES",
    "SERVICE_MAX_BATCH_BYTES",
    "SERVICE_MAX_BATCH_REQUESTS",
    "BudgetAction",
    "CanceledPolicy",
    "DryRunMode",
    "DryRunPolicy",
    "PipelineConfig",
    "base_url_problem",
    "secret_problem",
)

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_API_KEY_ENV = "ANTHROPIC_API_KEY"
#: The variable a base URL is taken from when none is given, as the official SDK does
#: (a gateway or proxy in front of the API).
BASE_URL_ENV = "ANTHROPIC_BASE_URL"
#: The variable a bearer token is taken from when there is no API key, as the official
#: SDK does (``Authorization: Bearer``, which some gateways ask for).
AUTH_TOKEN_ENV = "ANTHROPIC_AUTH_TOKEN"

#: The documented per-batch limits (Oct 2024). 32 MB is taken as 32,000,000 bytes,
#: which is inside the limit whether the service counts in MB or MiB.
DEFAULT_MAX_BATCH_REQUESTS = 10_000
DEFAULT_MAX_BATCH_BYTES = 32_000_000
#: What the service accepts today.
SERVICE_MAX_BATCH_REQUESTS = 100_000
SERVICE_MAX_BATCH_BYTES = 256_000_000

#: Requests at the service at once (submitted, results not yet collected).
DEFAULT_MAX_IN_FLIGHT = 100_000
#: How long a partial batch waits for more requests before it is sent anyway.
DEFAULT_LINGER_SECONDS = 2.0
#: Attempts per request, the first included, for retryable errors and expiries.
DEFAULT_MAX_ATTEMPTS = 3
#: Floor and ceiling of the poller's adaptive interval, in seconds.
DEFAULT_POLL_INTERVAL = 1.0
DEFAULT_MAX_POLL_INTERVAL = 60.0
#: Items buffered on each edge between the source and the chunker. Each item is one
#: list of lines: up to a MiB of a file source's input (its read size), or up to
#: 1,000 entries of an iterable. One waiting item per edge keeps every stage busy;
#: more only holds input in memory.
DEFAULT_BUFFER_SIZE = 1
#: Whole chunks (batches-to-be, up to ``max_batch_bytes`` each) waiting between the
#: chunker and the submitter. 0: the chunker packs the next chunk while one is being
#: sent and hands it over when the submitter takes it (at most one waits).
DEFAULT_CHUNK_BUFFER = 0
#: ``low_memory=None`` (automatic) holds one chunk at a time when ``max_batch_bytes``
#: is above this: the documented 32 MB, raised towards the service's 256 MB.
LOW_MEMORY_ABOVE_BYTES = DEFAULT_MAX_BATCH_BYTES
#: Longest wait between two tries of a batch create that the service refused for
#: now (429, 5xx, no connection) after the client's own retries, in seconds.
DEFAULT_MAX_CREATE_BACKOFF = 60.0

DryRunMode = Literal["off", "count-tokens", "messages"]
DryRunPolicy = Literal["reject-shape", "continue", "abort"]
CanceledPolicy = Literal["retry", "final"]
#: What reaching ``budget_usd`` does: stop submitting (the job stays resumable) or
#: cancel the job (its batches in flight too; see ``Pipeline.cancel``).
BudgetAction = Literal["stop", "cancel"]
DEFAULT_BUDGET_ACTION: BudgetAction = "stop"

DEFAULT_DRY_RUN: DryRunMode = "count-tokens"
DEFAULT_DRY_RUN_POLICY: DryRunPolicy = "reject-shape"
DEFAULT_DRY_RUN_SAMPLES = 1
#: Dry-run calls per second at most.
DEFAULT_DRY_RUN_RATE = 5.0


class PipelineConfig(msgspec.Struct, frozen=True, kw_only=True):
    """Tuning of one pipeline; every field has a documented default."""

    max_batch_requests: int = DEFAULT_MAX_BATCH_REQUESTS
    max_batch_bytes: int = DEFAULT_MAX_BATCH_BYTES
    max_in_flight: int = DEFAULT_MAX_IN_FLIGHT
    linger_seconds: float = DEFAULT_LINGER_SECONDS
    max_attempts: int = DEFAULT_MAX_ATTEMPTS
    poll_interval: float = DEFAULT_POLL_INTERVAL
    max_poll_interval: float = DEFAULT_MAX_POLL_INTERVAL
    canceled: CanceledPolicy = "final"
    buffer_size: int = DEFAULT_BUFFER_SIZE
    dry_run: DryRunMode = DEFAULT_DRY_RUN
    dry_run_samples: int = DEFAULT_DRY_RUN_SAMPLES
    dry_run_policy: DryRunPolicy = DEFAULT_DRY_RUN_POLICY
    dry_run_rate: float = DEFAULT_DRY_RUN_RATE
    budget_usd: float | None = None
    #: at the budget: "stop" submitting (resumable: raise the budget and re-run) or
    #: "cancel" the job, its batches in flight included (``Pipeline.cancel``)
    budget_action: BudgetAction = DEFAULT_BUDGET_ACTION
    delete_ended: bool = False
    #: chunks waiting between the chunker and the submitter (see DEFAULT_CHUNK_BUFFER)
    chunk_buffer: int = DEFAULT_CHUNK_BUFFER
    #: one chunk at a time: the chunker packs the next batch only once the submitter
    #: is done with the last (sent it, or spooled it on a stop), instead of while it is
    #: sent or waits for room at the service; and the requests of the input file go
    #: without their bytes once packed (read back from the file as the body is sent).
    #: A batch then costs about 0.6 times its body in memory instead of two batches
    #: at 1.7 times; the packing (reading and checking its lines) is no longer done
    #: while the last batch is sent. None: on when ``max_batch_bytes`` is above
    #: ``LOW_MEMORY_ABOVE_BYTES`` (32 MB) and ``chunk_buffer`` is 0
    low_memory: bool | None = None
    #: cap of the back-off between tries of a create the service refused for now
    max_create_backoff: float = DEFAULT_MAX_CREATE_BACKOFF
    #: model names accepted by the local check; None accepts any name (the service,
    #: and the dry run, then decide)
    models: frozenset[str] | None = None
    #: top-level params the local check lets through unchecked: fields the API added
    #: after this version of pipeline (the dry run and the service judge them)
    allow_fields: frozenset[str] = frozenset()
    #: the environment variable holding the API key, read when a ``Pipeline`` is
    #: given no ``client``, ``api_key`` nor ``base_url``
    api_key_env: str = DEFAULT_API_KEY_ENV

    @property
    def one_chunk_at_a_time(self) -> bool:
        """Whether the run holds one chunk at a time: ``low_memory``, or its automatic
        choice when None."""
        if self.low_memory is not None:
            return self.low_memory
        return self.max_batch_bytes > LOW_MEMORY_ABOVE_BYTES and self.chunk_buffer == 0

    def __post_init__(self) -> None:
        if not 1 <= self.max_batch_requests <= SERVICE_MAX_BATCH_REQUESTS:
            raise ValueError(
                f"max_batch_requests must be 1..{SERVICE_MAX_BATCH_REQUESTS}, "
                f"got {self.max_batch_requests}"
            )
        if not 1024 <= self.max_batch_bytes <= SERVICE_MAX_BATCH_BYTES:
            raise ValueError(
                f"max_batch_bytes must be 1024..{SERVICE_MAX_BATCH_BYTES}, got {self.max_batch_bytes}"
            )
        if self.max_in_flight < self.max_batch_requests:
            raise ValueError(
                f"max_in_flight ({self.max_in_flight}) must be at least max_batch_requests "
                f"({self.max_batch_requests}), or no batch could ever be sent"
            )
        if self.linger_seconds < 0:
            raise ValueError(f"linger_seconds must be >= 0, got {self.linger_seconds}")
        if self.max_attempts < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        if not 0 < self.poll_interval <= self.max_poll_interval:
            raise ValueError(
                f"poll_interval must be > 0 and <= max_poll_interval ({self.max_poll_interval}), "
                f"got {self.poll_interval}"
            )
        if self.buffer_size < 1:
            raise ValueError(f"buffer_size must be >= 1, got {self.buffer_size}")
        if self.chunk_buffer < 0:
            raise ValueError(f"chunk_buffer must be >= 0, got {self.chunk_buffer}")
        if self.low_memory and self.chunk_buffer:
            raise ValueError(
                f"low_memory holds one chunk at a time: chunk_buffer must be 0, "
                f"got {self.chunk_buffer}"
            )
        if self.max_create_backoff <= 0:
            raise ValueError(f"max_create_backoff must be > 0, got {self.max_create_backoff}")
        if self.dry_run_samples < 1:
            raise ValueError(f"dry_run_samples must be >= 1, got {self.dry_run_samples}")
        if self.dry_run_rate <= 0:
            raise ValueError(f"dry_run_rate must be > 0, got {self.dry_run_rate}")
        if self.budget_usd is not None and self.budget_usd < 0:
            raise ValueError(f"budget_usd must be >= 0, got {self.budget_usd}")
        if self.budget_action not in ("stop", "cancel"):
            raise ValueError(
                f"budget_action must be 'stop' or 'cancel', got {self.budget_action!r}"
            )
        if self.models is not None and (not self.models or not all(self.models)):
            raise ValueError(
                f"models must name at least one model (or be None to accept any), "
                f"got {sorted(self.models)}"
            )
        if not all(self.allow_fields):
            raise ValueError(f"allow_fields must be field names, got {sorted(self.allow_fields)}")
        if not self.api_key_env:
            raise ValueError("api_key_env must name an environment variable")


def secret_problem(value: str) -> str | None:
    """What makes ``value`` unusable as an API key or bearer token, in words that show
    none of it; None when it is usable. A key goes into an HTTP header as written, so
    it must be printable ASCII without spaces: a trailing ``\\r`` (a ``.env`` file with
    Windows line ends) or ``\\n``, a space, or a character pasted from a formatted
    document would otherwise fail every request, with the key in the error."""
    if not value:
        return "is empty"
    if value.isascii() and value.isprintable() and " " not in value:
        return None
    size = len(value)
    for i, char in enumerate(value):
        if "!" <= char <= "~":
            continue
        where = (
            "ends with"
            if i == size - 1
            else "starts with"
            if i == 0
            else f"has, at character {i + 1} of {size},"
        )
        if char == "\r":
            return (
                f"{where} a carriage return (\\r), as a value read from a file with "
                "Windows (CRLF) line ends has: remove it"
            )
        if char == "\n":
            return f"{where} a line feed (\\n): remove it"
        if char.isspace():
            return f"{where} whitespace: remove it"
        if not char.isascii():
            return (
                f"{where} a non-ASCII character (keys are ASCII: was it copied from a "
                "formatted document?)"
            )
        return f"{where} a control character: remove it"
    return None  # pragma: no cover - every character was printable ASCII


def base_url_problem(url: str) -> str | None:
    """What makes ``url`` unusable as the API's base URL, in words that show only its
    scheme, host and path (a query could hold a token); None when it is usable: an
    absolute ``http://`` or ``https://`` URL with a host, and no query or fragment
    (request paths are appended to it, so a query would be lost or misplaced)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        return f"is not a URL ({exc})"
    host = parts.netloc.rpartition("@")[2]  # without any credentials
    shown = f"{parts.scheme}://{host}{parts.path}"
    if not url.isascii() or not url.isprintable() or " " in url:
        return "is not a URL: it holds spaces or characters a URL cannot hold"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (
            "is not an absolute http:// or https:// URL (e.g. https://api.anthropic.com, "
            "or a gateway's http://127.0.0.1:8080)"
        )
    if parts.query or url.endswith("?"):
        return f"has a query string (not shown): give {shown} without it"
    if parts.fragment or url.endswith("#"):
        return f"has a fragment (#...): give {shown} without it"
    if parts.username is not None or parts.password is not None:
        return (
            f"holds credentials before its host (not shown): give {shown} and the key "
            "in its own variable"
        )
    return None
