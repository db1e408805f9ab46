"""``BatchTrack``: a batch of the job as the API told, kept by the job's observer
(``_observe``) and read by its tracer (``_tracing``), which both import it from here,
so that neither imports the other for it."""

from __future__ import annotations

from typing import Any

import msgspec

__all__ = ("BatchTrack",)


class BatchTrack(msgspec.Struct, kw_only=True):
    """A batch of the job between its create and its collection, as the API told."""

    batch_id: str
    request_count: int
    #: POSIX time the service created it (its ``created_at``)
    created_at: float
    #: ``in_progress``, ``canceling``, ``ended``
    status: str = "in_progress"
    #: the service's ``request_counts``: processing, succeeded, errored, canceled, expired
    counts: dict[str, int] = {}
    ended_at: float | None = None
    #: first seen polled, not created, by this run (a resumed job)
    resumed: bool = False
    #: the tracer's span of this batch, if tracing
    span: Any = None
