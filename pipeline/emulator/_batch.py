"""One batch as the emulator holds it: its body's entries, its record, its timeline.

Only the record (``BatchRecord``) stays in memory for the life of a batch: times,
counts and the paths of its files. Everything that depends on the clock (status,
end, cutoff, archive) is computed from it and the config each time it is asked
(``Timeline``), so a batch needs no timer, and a restarted emulator with another
config serves an ended batch as it ended.

Processing model: the ``N`` requests of a batch are processed one after another,
uniformly over ``batch_seconds`` (request ``i`` at ``created + batch_seconds*(i+1)/N``).
A cancel or the expiry cuts that off; the requests not processed by then end
``canceled`` or ``expired``. A cancel takes ``cancel_seconds`` to end the batch, and
nothing runs past the expiry.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import TYPE_CHECKING, Literal

import msgspec

from pipeline.api._types import CustomId, MessageBatch, RequestCounts

if TYPE_CHECKING:
    from pathlib import Path

    import anyio

    from ._config import EmulatorConfig

__all__ = (
    "BatchRecord",
    "BodyView",
    "EntryView",
    "LaxBody",
    "LaxEntry",
    "Status",
    "Timeline",
    "rfc3339",
)

#: A batch's ``processing_status``.
Status = Literal["in_progress", "canceling", "ended"]


class EntryView(msgspec.Struct, forbid_unknown_fields=True):
    """A batch entry as checked at create: the params stay raw (validated later)."""

    custom_id: CustomId
    params: msgspec.Raw


class BodyView(msgspec.Struct, forbid_unknown_fields=True):
    requests: list[EntryView]


class LaxEntry(msgspec.Struct, forbid_unknown_fields=True):
    """``EntryView`` without the custom_id pattern, which is checked for all ids at once."""

    custom_id: str
    params: msgspec.Raw


class LaxBody(msgspec.Struct, forbid_unknown_fields=True):
    requests: list[LaxEntry]


def rfc3339(t: float) -> str:
    """``2024-08-20T18:37:24.100435Z``: the service's timestamp form."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class BatchRecord:
    """What the emulator keeps in memory about one batch: times, counts and paths."""

    __slots__ = (
        "body_path",
        "cancel_at",
        "count",
        "counts",
        "created",
        "ended",
        "generating",
        "held",
        "id",
        "log_end",
        "results_path",
        "results_size",
        "seq",
        "workspace",
    )

    def __init__(self, *, id: str, seq: int, workspace: str, created: float, count: int) -> None:
        self.id = id
        self.seq = seq
        self.workspace = workspace
        self.created = created
        self.count = count
        self.cancel_at: float | None = None
        self.log_end = 0  # the submissions log's size once this batch is in it
        self.counts: RequestCounts | None = None  # set once the results exist
        # When it ended, fixed once the results exist: an ended batch stays ended
        # whatever the clock or the config of a restarted emulator says.
        self.ended: float | None = None
        self.generating: anyio.Event | None = None
        self.body_path: Path | None = None
        # The body's entries while they are still in memory (then ``body_path`` may not
        # exist yet): the latest batch is processed from them without a disk round trip.
        self.held: list[LaxEntry] | list[EntryView] | None = None
        self.results_path: Path | None = None
        self.results_size = 0


class Timeline:
    """When things happen to a batch under ``config``: the processing model above.

    A base of the Store, so that these stay its methods (the app and the results
    generation call them on it) while the rest of the Store is about files.
    """

    config: EmulatorConfig

    def _cutoff(self, record: BatchRecord) -> tuple[float, float, bool]:
        """(end time, processing cutoff, canceled?) of a batch."""
        cfg = self.config
        natural = min(record.created + cfg.batch_seconds, record.created + cfg.expiry_seconds)
        if record.cancel_at is not None and record.cancel_at < natural:
            end = min(record.cancel_at + cfg.cancel_seconds, record.created + cfg.expiry_seconds)
            return end, record.cancel_at, True
        return natural, natural, False

    def _end(self, record: BatchRecord) -> float:
        """When the batch ends (or ended)."""
        return record.ended if record.ended is not None else self._cutoff(record)[0]

    def processed_count(self, record: BatchRecord) -> int:
        """How many requests (in index order) were processed before the cutoff."""
        _, cutoff, canceled = self._cutoff(record)
        seconds = self.config.batch_seconds
        if seconds <= 0 or (not canceled and seconds <= self.config.expiry_seconds):
            return record.count  # it ran its course: every request was processed
        # ``created + seconds - created`` is not ``seconds`` in floats at epoch-sized
        # times, hence the relative tolerance
        done = int((cutoff - record.created) / seconds * record.count * (1 + 1e-9))
        return max(0, min(record.count, done))

    def status(self, record: BatchRecord, now: float) -> Status:
        """The processing status at ``now``."""
        if record.ended is not None or now >= self._end(record):
            return "ended"
        return "canceling" if record.cancel_at is not None else "in_progress"

    def archive_time(self, record: BatchRecord) -> float:
        """When the results stop being available."""
        return max(record.created + self.config.retention_seconds, self._end(record))

    def render(self, record: BatchRecord, now: float, status: Status) -> MessageBatch:
        """The MessageBatch object (``results_url`` is filled in by the app)."""
        end = self._end(record)
        ended = status == "ended" and record.counts is not None
        archive = self.archive_time(record)
        counts = (
            record.counts if ended and record.counts else RequestCounts(processing=record.count)
        )
        return MessageBatch(
            id=record.id,
            processing_status="ended"
            if ended
            else ("canceling" if status == "canceling" else "in_progress"),
            request_counts=counts,
            created_at=rfc3339(record.created),
            expires_at=rfc3339(record.created + self.config.expiry_seconds),
            ended_at=rfc3339(end) if ended else None,
            cancel_initiated_at=None if record.cancel_at is None else rfc3339(record.cancel_at),
            archived_at=rfc3339(archive) if ended and now >= archive else None,
        )
