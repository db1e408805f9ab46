"""What travels between stages. Streams carry lists of these (one list per chunk of
work), never one item per send: a send costs more than a small item."""

from __future__ import annotations

import msgspec

__all__ = (
    "EndedBatch",
    "Entry",
    "Flush",
    "RawLine",
    "Reject",
    "RejectError",
    "RejectLine",
    "SubmittedBatch",
    "Watermark",
)


# The per-request items hold scalars only (and one another): no cycle is possible, so
# they are not tracked by the cyclic GC (``gc=False``), which would otherwise walk the
# tens of thousands in flight over and over.
class RawLine(msgspec.Struct, array_like=True, gc=False):
    """One input line as read: 1-based ``line``, the bytes without terminator, and
    the byte ``offset`` of the line's start in the source (-1 for iterables).
    ``size``: the line's length in the source when ``data`` stands for a line too
    long to hold (``source.OVERSIZE_PREFIX``), else -1 (it is ``len(data)``)."""

    line: int
    data: bytes
    offset: int = -1
    size: int = -1


class Entry(msgspec.Struct, array_like=True, gc=False):
    """A request ready to send: ``raw`` is the exact encoded ``{"custom_id":...,
    "params":...}`` object that goes into the batch body.

    ``end`` is the source position just after this entry's line (what a checkpoint
    records), ``attempt`` counts submissions, 1 for the first. ``signature`` is the
    dry-run shape key; ``model``, ``max_tokens`` and ``input_tokens`` feed the
    spend guard's estimate ``cost_usd`` (0 when unknown).
    """

    line: int
    custom_id: str
    raw: bytes
    offset: int = -1
    end: int = -1
    attempt: int = 1
    signature: str = ""
    model: str = ""
    max_tokens: int = 0
    #: input tokens: measured by a dry run, else the documented approximation
    input_tokens: int = -1
    cost_usd: float = 0.0
    #: ``pipeline.cache_write_factor`` of ``raw`` (the validate stage sets it once);
    #: negative: not known yet
    input_factor: float = -1.0
    #: the CRC-32 of ``raw`` when the chunker took the bytes off (low memory: ``raw``
    #: empty, read back from the input file as the body is sent, and checked against
    #: it); 0 while the entry holds its bytes
    crc32: int = 0


class RejectError(msgspec.Struct, gc=False):
    type: str
    message: str


class Reject(msgspec.Struct, gc=False):
    """One input that cannot be sent. The rejects JSONL holds
    ``{"line": N, "custom_id": ... or null, "error": {"type": ..., "message": ...}}``
    (``RejectLine``); ``end`` is the source position after the line."""

    line: int
    custom_id: str | None
    error: RejectError
    end: int = -1


class RejectLine(msgspec.Struct):
    """The rejects file's line format."""

    line: int
    custom_id: str | None
    error: RejectError


class Flush(msgspec.Struct):
    """A marker: send the partial batch now (the source ended, or a retry round
    was fed in). ``end`` is the source position the marker stands at."""

    end: int = -1
    final: bool = False


class Watermark(msgspec.Struct):
    """A marker: from here on, a checkpoint may not pass the start of the earliest
    entry still held upstream (the dry run lets checked shapes overtake entries
    whose shape is being checked). ``end`` is that entry's byte offset and ``line``
    the line before it; None lifts the cap. With ``stop`` (the spend guard refused
    the entry at ``end``), the cap only lowers the one in force and is never
    lifted: nothing after a stop may move the checkpoint past the refused entry."""

    end: int | None = None
    line: int | None = None
    stop: bool = False


class SubmittedBatch(msgspec.Struct):
    """A batch created at the service, as the poller tracks it. ``submitted_at`` is
    wall-clock time (``time.time()``, like the ledger's ``sent_at``), so the age of
    a batch resumed after a restart is right."""

    local_id: int
    batch_id: str
    request_count: int
    submitted_at: float
    #: found by reconciliation after a create of unknown outcome: its results are
    #: checked against the requests the ledger has for it (it might not be ours)
    adopted: bool = False


class EndedBatch(msgspec.Struct):
    """A batch whose processing ended: its results may be downloaded."""

    local_id: int
    batch_id: str
    request_count: int
    results_url: str | None
    adopted: bool = False
