"""The async client of the Message Batches and Messages APIs (one ``httpx.AsyncClient``).

INTERFACE STUB: signatures are fixed (other modules are written against them);
bodies are being implemented.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

import anyio
import httpx

from .._config import DEFAULT_BASE_URL

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
    from types import TracebackType

    from ._types import (
        DeletedMessageBatch,
        Message,
        MessageBatch,
        MessageBatchList,
        ResultLine,
    )

__all__ = ("DEFAULT_MAX_RETRIES", "DEFAULT_TIMEOUT", "Client")

DEFAULT_MAX_RETRIES = 4
DEFAULT_TIMEOUT = httpx.Timeout(600.0, connect=10.0)


class Client:
    """Async client of the Batches API. Use as ``async with Client(...) as client``.

    ``sleep`` and ``random`` are injected so retry schedules are testable in virtual
    time. The API key is held privately and never appears in a repr, log or error.
    """

    def __init__(
        self,
        *,
        api_key: str | None,
        base_url: str = DEFAULT_BASE_URL,
        beta: bool = False,
        extra_headers: Mapping[str, str] | None = None,
        timeout: httpx.Timeout | float = DEFAULT_TIMEOUT,
        max_retries: int = DEFAULT_MAX_RETRIES,
        max_connections: int = 20,
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        random: Callable[[], float] = random.random,
    ) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> Client:
        raise NotImplementedError

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        raise NotImplementedError

    async def aclose(self) -> None:
        """Close the connection pool; idempotent."""
        raise NotImplementedError

    # -- batches -------------------------------------------------------------------

    async def create_batch(self, body: bytes, *, request_count: int) -> MessageBatch:
        """POST an already-encoded ``{"requests":[...]}`` body.

        Retried only when the request certainly did not reach the service (connect
        errors, and 429/5xx answers, which mean "not created"). When the body may
        have been sent and no answer came (read timeout, connection dropped after
        writing), raises ``CreateOutcomeUnknownError`` instead of re-sending.
        """
        raise NotImplementedError

    async def retrieve_batch(self, batch_id: str) -> MessageBatch:
        raise NotImplementedError

    async def list_batches_page(
        self, *, limit: int | None = None, before_id: str | None = None, after_id: str | None = None
    ) -> MessageBatchList:
        raise NotImplementedError

    def list_batches(
        self, *, limit: int | None = None, before_id: str | None = None, after_id: str | None = None
    ) -> AsyncIterator[MessageBatch]:
        """Every batch of the workspace, newest first, walking pages like the SDK."""
        raise NotImplementedError

    async def cancel_batch(self, batch_id: str) -> MessageBatch:
        raise NotImplementedError

    async def delete_batch(self, batch_id: str) -> DeletedMessageBatch:
        raise NotImplementedError

    def results_lines(self, batch: MessageBatch) -> AsyncIterator[list[bytes]]:
        """The raw JSONL lines of an ended batch's results, a list per network chunk.

        Lines carry no line terminator (``\\n`` and ``\\r\\n`` both stripped) and blank
        lines are skipped. The response is always closed, also on error or when the
        consumer stops early. A broken download raises ``ResultStreamError`` (callers
        re-open and skip what they already have).
        """
        raise NotImplementedError

    def results(self, batch: MessageBatch) -> AsyncIterator[ResultLine]:
        """Typed result lines of an ended batch (built on ``results_lines``)."""
        raise NotImplementedError

    # -- messages ------------------------------------------------------------------

    async def create_message(self, params: bytes) -> Message:
        """POST /v1/messages with already-encoded params."""
        raise NotImplementedError

    async def count_tokens(self, params: bytes) -> int:
        """POST /v1/messages/count_tokens with already-encoded params; input tokens."""
        raise NotImplementedError
