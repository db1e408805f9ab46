"""The ledger's interface: the durable state of one job.

Every method is one transaction. The pipeline is written against ``Ledger``; the
embedded default is SQLite (``SQLiteLedger``); a PostgreSQL backend for several
workers sharing one job implements the same methods.

The protocol of a batch, and what a crash between any two steps leaves behind:

1. ``claim``: the requests of a batch-to-be are recorded (state ``claimed``)
   with the rejects that precede them and the source checkpoint after them;
   duplicates of custom_ids already in the job come back as rejects. The batch
   is recorded as an *intent* (no batch id yet). Crash after: on restart the
   intent is reconciled (``pending_intents``), never blindly re-sent.
2. ``record_sending``: body size and send time, just before the POST.
3. ``record_created``: the service's batch id. Crash after: polled again.
   Or ``resplit`` (413: the requests move to smaller intents) or
   ``reject_batch`` (the create was refused for good: its requests become
   rejects) or ``release`` (the create certainly did not happen: the requests
   go to the spool, to be claimed again).
4. ``record_ended``: processing ended at the service.
5. ``commit_results`` (repeatedly, per sink flush): the sink's durable
   position, results written, retryable requests spooled; ``done=True`` on the
   last one marks the batch collected.

Duplicate custom_ids: the first line wins, always. The first entry claimed with a
custom_id holds it for the whole job: every later entry with that custom_id, in the
same claim or a later one, in this run or after any number of restarts, while the
holder is claimed, sent, collected, spooled for a retry or refused by the service,
is a duplicate, recorded as a reject whose message names the holder's line
(``custom_id 'X' already used on line N``). Only the holder's own line comes back
unrejected: read again after a restart (``skipped``), or as its retry from the
spool. A line rejected before it was claimed (invalid, or refused by the dry run)
holds nothing. The runner claims every custom_id's entries in input order (no
stage lets an entry overtake an earlier one of its custom_id: the dry run holds a
later copy behind a held entry), so "first claimed" is "first in the input"; a
backend keeps this rule whatever its layout, and ``tests/ledger`` checks it
through this interface.

What the runner must keep to for crash safety: a sink fsyncs its file before
its ``commit_results`` / ``commit_rejects``, and truncates it back to the
``ResumeState`` position on start; ``reconcile`` settles every pending intent
before the first new create (a fresh create of the same size would make the
match ambiguous); a batch downloaded again after a restart writes only what
``unwritten`` still lists (the ``written_ids`` of earlier commits are done);
``mark_finished`` only when the source is exhausted, the spool empty and every
batch collected.

Canceling a job (``pipeline cancel``): ``request_cancel`` records the intent
first (idempotent; another process may record it while a worker holds the job,
see ``ledger._cancel.request_cancel``), then the batches in flight are canceled
at the service and collected, their canceled requests held by ``commit_results``
(``canceled=``) rather than written or spooled, and ``mark_canceled`` ends it.
A crash anywhere in between leaves the intent: the next run (or cancel) of the
job completes the cancel. ``resume_canceled`` sends the held requests again.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Protocol

import msgspec

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ..stages._items import Entry, Reject

__all__ = (
    "BatchRecord",
    "ClaimResult",
    "JobSpec",
    "JobStatus",
    "Ledger",
    "ResumeState",
    "Settled",
    "SinkPosition",
    "SpoolItem",
)

BatchState = Literal["intent", "sending", "created", "ended", "collected", "rejected"]
#: A job's cancel: asked for (to be completed by whoever runs the job next), or done.
CancelState = Literal["requested", "canceled"]


class JobSpec(msgspec.Struct, frozen=True, kw_only=True):
    """What identifies a job; a state file refuses to serve another job."""

    input_path: str | None
    #: hash of the input's first MiB and its size at start (None for iterables)
    input_fingerprint: str | None
    output_path: str | None
    rejects_path: str | None


class SinkPosition(msgspec.Struct, frozen=True):
    """What a sink has durably written: bytes and lines."""

    offset: int = 0
    count: int = 0


class BatchRecord(msgspec.Struct, kw_only=True):
    local_id: int
    batch_id: str | None
    state: BatchState
    request_count: int
    body_bytes: int = 0
    sent_at: float | None = None
    #: the output offset at which this batch's first result line was written
    output_start: int | None = None
    results_written: int = 0


class SpoolItem(msgspec.Struct, array_like=True):
    """A request waiting to be re-sent: read back from the source by ``offset`` and
    ``length`` when it came from a file, else carried in ``raw``."""

    custom_id: str
    line: int
    attempt: int
    #: byte offset of the line in the source file (-1 for iterables)
    offset: int
    #: bytes from ``offset`` to the entry's ``end`` (the line and its terminator);
    #: ``len(raw)`` when ``raw`` is carried
    length: int
    raw: bytes | None
    #: position in the spool, for paging ``take_spool(limit, after=seq)`` (added)
    seq: int = 0


class ClaimResult(msgspec.Struct):
    #: 0 when every entry was a duplicate: no batch was recorded, nothing to send
    local_id: int
    #: indices (into the claimed entries) that were duplicates and became rejects
    duplicates: list[int]
    #: indices of entries the job already holds from this very source line (read
    #: again after a restart): accounted for already, neither sent nor rejected
    skipped: list[int] = msgspec.field(default_factory=list)
    #: rejects newly recorded (given and duplicates); a reject of a source line
    #: read again after a restart is recorded once
    rejected: int = 0
    #: indices of entries deferred: their custom_id may be held (the filter could not
    #: rule it out), so they are neither sent nor rejected now; the ledger keeps them
    #: and settles them later, many at once (``resolve_deferred``)
    deferred: list[int] = msgspec.field(default_factory=list)
    #: deferred requests (of this claim or earlier ones) settled in this claim:
    #: ``released`` of them were new and wait in the spool to be sent, the others were
    #: rejected as duplicates (counted in ``rejected``) or were lines read again
    settled: int = 0
    released: int = 0


class Settled(msgspec.Struct):
    """What ``resolve_deferred`` did: requests settled, of them released to the spool
    (new ids, to be sent), and rejects recorded (copies of ids held)."""

    settled: int = 0
    released: int = 0
    rejected: int = 0


class ResumeState(msgspec.Struct, kw_only=True):
    """What ``open`` found: where to pick the job up."""

    fresh: bool
    finished: bool
    source_offset: int = 0
    source_line: int = 0
    output: SinkPosition = SinkPosition()
    rejects: SinkPosition = SinkPosition()
    #: batches created at the service and not yet collected (poll / download again)
    batches: list[BatchRecord] = []
    #: creates with an unknown outcome (reconcile against the service's list)
    pending_intents: list[BatchRecord] = []
    spooled: int = 0
    #: (added) requests whose custom_id waits to be resolved (``Ledger.claim``): sent
    #: or rejected once ``resolve_deferred`` settles them
    deferred: int = 0
    #: the estimated cost of every request claimed so far (what a budget counts)
    estimated_cost_usd: float = 0.0
    #: (added) with ``pending_intents`` sent: when a worker of this job first opened
    #: it after the last of those sends, so when their connections were gone at the
    #: latest; kept over later restarts (``reconcile``'s ``since``). None: unknown
    #: (then the time of this open is safe)
    takeover_at: float | None = None
    #: (added) the job's cancel: None, "requested" (complete it) or "canceled"
    cancel: CancelState | None = None
    #: (added) requests held as canceled by the job's cancel (``resume_canceled``)
    canceled: int = 0
    #: (added) further named sinks (a result processor's routes): their positions
    sinks: dict[str, SinkPosition] = {}


class JobStatus(msgspec.Struct, kw_only=True):
    """Progress counters, for ``pipeline status``."""

    read: int
    rejected: int
    submitted: int
    ended: int
    written: int
    spooled: int
    finished: bool
    batches: list[BatchRecord]
    # -- added by the SQLite ledger (defaults keep other backends valid) --
    job: JobSpec | None = None
    #: reject lines durably in the rejects file
    rejects_written: int = 0
    #: source byte offset of the checkpoint (``read`` is its line number)
    source_offset: int = 0
    #: a worker holds the job's lock right now (None: unknown)
    worker_running: bool | None = None
    #: the output sink's durable position (bytes and lines)
    output: SinkPosition = SinkPosition()
    #: the estimated cost of every request claimed so far
    estimated_cost_usd: float = 0.0
    #: the job's cancel: None, "requested" (under way) or "canceled"
    cancel: CancelState | None = None
    #: requests held as canceled by the job's cancel
    canceled: int = 0


class Ledger(Protocol):
    """Durable state of one job; each method is one transaction."""

    async def open(self, job: JobSpec) -> ResumeState:
        """Create or check the state; raise ``LedgerError`` on a foreign or corrupt file."""
        ...

    async def aclose(self) -> None: ...

    async def claim(
        self, entries: Sequence[Entry], rejects: Sequence[Reject], *, checkpoint: int, line: int
    ) -> ClaimResult:
        """Record a batch intent with its entries (retries, ``attempt > 1``, move back
        from the spool), the rejects before them, and the source checkpoint (byte
        offset ``checkpoint`` after input line ``line``). Entries whose custom_id the
        job already holds, or an earlier entry of this claim carries, are returned as
        duplicates and recorded as rejects naming the holder's line (the first line
        wins: see the module docstring), unless the job holds it from the same
        source line (read again after a restart): those come back as ``skipped``. Recording a reject is idempotent. The
        entries' ``cost_usd`` adds to the job's ``estimated_cost_usd``.

        (added) A ledger may *defer* entries whose custom_id it cannot rule out
        cheaply (``deferred``): it keeps them, neither sent nor rejected, and settles
        them later, many at once, by the same rules (first line wins), in a later
        claim (``settled``, ``released``) or in ``resolve_deferred``. Those found new
        go to the spool (sent as retries are, same attempt); the others become
        rejects."""
        ...

    async def resolve_deferred(self) -> Settled:
        """(added) Settle every deferred request now (the input was read to its end,
        or nothing else is under way): new ones to the spool, copies of ids held to
        the rejects."""
        ...

    async def record_rejects(self, rejects: Sequence[Reject], *, checkpoint: int, line: int) -> int:
        """Record rejects with no batch (e.g. the tail of the input) and the
        checkpoint; how many were new (a line read again is recorded once)."""
        ...

    async def record_sending(self, local_id: int, *, body_bytes: int, sent_at: float) -> None: ...

    async def record_created(self, local_id: int, batch_id: str) -> None: ...

    async def resplit(self, local_id: int, parts: Sequence[Sequence[str]]) -> list[int]:
        """Move the intent's requests (by custom_id) into new intents, one per part."""
        ...

    async def reject_batch(self, local_id: int, error_type: str, message: str) -> None: ...

    async def release(self, local_id: int) -> None:
        """The create certainly did not happen: spool the requests for another claim."""
        ...

    async def record_ended(self, local_id: int) -> None: ...

    async def record_output_start(self, local_id: int, offset: int) -> None: ...

    async def commit_results(
        self,
        local_id: int,
        *,
        output: SinkPosition,
        written: int,
        spool: Sequence[str] = (),
        done: bool = False,
        written_ids: Sequence[str] = (),
        durable: bool = False,
        canceled: Sequence[str] = (),
        sinks: Mapping[str, SinkPosition] | None = None,
    ) -> int:
        """The sink's durable position after writing ``written`` more lines of this
        batch; ``spool``: custom_ids to re-send (their attempt is incremented);
        ``canceled`` (added): custom_ids whose result was ``canceled`` by the job's
        cancel, held as canceled (neither written nor spooled) until
        ``resume_canceled``; ``sinks`` (added, optional): the durable positions of
        further named sinks (a result processor's routes), committed in the same step.
        ``written_ids`` (added, optional): the custom_ids of the lines written, so
        that after a crash ``unwritten`` tells a re-download what is still owed.
        With ``done``, a request of the batch that got no result line at all (the
        service lost it, or the batch was adopted by mistake and never held it) is
        spooled too, so that it is sent again rather than lost; the number of those is
        returned (0 otherwise). ``durable``: commit with an fsync, before a step that
        cannot be undone (deleting the batch at the service)."""
        ...

    async def unwritten(self, local_id: int, custom_ids: Sequence[str]) -> list[str]:
        """(added) Those of ``custom_ids`` this batch still owes the output: not
        committed in ``written_ids`` and not spooled. For a re-download after a crash."""
        ...

    async def known_batch_ids(self, batch_ids: Sequence[str]) -> set[str]:
        """(added) Those of ``batch_ids`` already recorded (for reconciliation)."""
        ...

    async def commit_rejects(self, position: SinkPosition) -> None: ...

    async def rejects_after(self, count: int, limit: int) -> list[Reject]:
        """Recorded rejects from the ``count``-th on, for the rejects writer."""
        ...

    async def take_spool(self, limit: int, *, after: int = 0) -> list[SpoolItem]:
        """Up to ``limit`` spooled requests, oldest first (they stay spooled until
        claimed); ``after`` (added): the ``seq`` of the last item already taken."""
        ...

    async def requests(self, custom_ids: Sequence[str]) -> list[SpoolItem]:
        """(added) The stored request of each of ``custom_ids`` the job holds, in no
        particular order: its bytes (``raw``: a request a builder or another user
        stage made, or one from an iterable) or where they are in the input file
        (``offset``, ``length``). What a result processor joins each result with;
        ``seq`` is 0."""
        ...

    async def attempts(self, custom_ids: Sequence[str]) -> dict[str, int]:
        """The attempt number of each custom_id's last submission."""
        ...

    async def mark_finished(self) -> None: ...

    async def last_line(self) -> int:
        """(added) The highest source line the job holds (claimed, rejected, or
        passed by the checkpoint): where a source that cannot replay its input (a
        queue) numbers on from, so a new line never takes the number of one a
        crashed run claimed past the checkpoint."""
        ...

    async def status(self) -> JobStatus: ...

    async def request_cancel(self) -> None:
        """(added) Record that the job is to be canceled: nothing more is submitted,
        and whoever runs the job (this run, the next, or ``pipeline cancel``) cancels
        its batches at the service, collects them and calls ``mark_canceled``. The
        intent is recorded before anything is canceled, so that a crash in the
        middle of a cancel is completed later. Idempotent; no-op on a job that
        finished or is canceled already."""
        ...

    async def cancel_requested(self) -> bool:
        """(added) Whether a cancel of the job was asked for and not completed yet
        (by another process too: a running job checks it at each poll)."""
        ...

    async def mark_canceled(self) -> int:
        """(added) The cancel is complete: no batch of the job is in flight any more.
        A re-run says the job was canceled instead of going on. How many requests
        are held as canceled."""
        ...

    async def resume_canceled(self) -> int:
        """(added) Undo a completed cancel on purpose: the requests held as canceled
        are spooled (same attempt: the cancel was not their failure) and the job
        goes on like any unfinished job. How many were spooled."""
        ...
