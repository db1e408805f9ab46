"""Reconciliation of batch creates whose outcome is unknown.

A create that was sent (``record_sending``) but never recorded as created
(``record_created``) may or may not exist at the service: the worker died between
the POST and the commit, or the answer never came. Sending it again could pay for
it twice, so on restart the workspace's batches are listed (newest first, back to
just before the earliest such send) and matched by request count and creation
time. Exactly one candidate not already in the ledger: it is adopted (polled like
any other). More than one candidate: ``AmbiguousCreateError``, which lists them
and says how to decide. Intents never sent (``record_sending`` not reached) are
released at once.

When is "not listed" certain to mean "not created"? Once the connection that sent
the create is gone (``since``: the worker that sent it died before this one took
the job's lock, or this client gave up on it), the service can only finish a
create it had fully received by then, and lists it within moments. So the list is
authoritative ``settle`` seconds (``DEFAULT_SETTLE_SECONDS``, 10) after
``max(sent_at, since)``: then the intent is released to the spool and sent again.
Until then, the list is asked again at that time. ``since`` is the ledger's
``ResumeState.takeover_at``, which stays the same over any number of restarts, so
a worker killed again and again still gets there (before, each start waited a
minute from the send, and a crash loop never settled anything).

``settle_pending`` runs this beside the job's stages on resume: batches in flight
are polled and collected, the input is read and checked meanwhile; only new
creates wait (a create of the same size sent now would make the match ambiguous).
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import anyio
import msgspec

from .._errors import LedgerError
from ..stages._items import SubmittedBatch
from ._base import BatchRecord

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine

    from anyio.abc import ObjectSendStream

    from ..api import Client
    from ..api._types import MessageBatch
    from ..stages._protocol import Capacity, JobCounters
    from ._base import Ledger

__all__ = (
    "DEFAULT_CLOCK_SKEW",
    "DEFAULT_MAX_LATENCY",
    "DEFAULT_SETTLE_SECONDS",
    "AmbiguousCreateError",
    "ReconcileReport",
    "reconcile",
    "reconciler",
    "settle_pending",
)

#: How far the service's clock may be behind ours, in seconds.
DEFAULT_CLOCK_SKEW = 60.0
#: How long after ``sent_at`` the service may stamp the batch's ``created_at``
#: (the upload of a large body, plus the skew).
DEFAULT_MAX_LATENCY = 660.0
#: How long after a create's connection is gone (and after its send) "not listed"
#: means "not created": the time the service may take to list a create it had
#: fully received. The environment variable ``PIPELINE_RECONCILE_SETTLE_SECONDS``
#: overrides it (tests against a local emulator, where a create is processed in
#: milliseconds).
DEFAULT_SETTLE_SECONDS = 10.0
_SETTLE_ENV = "PIPELINE_RECONCILE_SETTLE_SECONDS"


def _default_settle() -> float:
    value = os.environ.get(_SETTLE_ENV)
    if value is None:
        return DEFAULT_SETTLE_SECONDS
    try:
        return max(0.0, float(value))
    except ValueError:
        raise ValueError(f"{_SETTLE_ENV} must be a number of seconds, got {value!r}") from None


class ReconcileReport(msgspec.Struct, kw_only=True):
    """What reconciliation did: the intents ``adopted`` (now ``created``, with their
    batch id: poll them like ``ResumeState.batches``), the local ids ``released``
    to the spool, and how many listed batches it examined."""

    adopted: list[BatchRecord] = []
    released: list[int] = []
    examined: int = 0


class AmbiguousCreateError(LedgerError):
    """Several batches at the service could be the one an unknown-outcome create
    made; the pipeline will not guess (adopting the wrong one, or re-sending, could
    lose results or pay twice)."""

    def __init__(
        self, path: str, intent: BatchRecord, candidates: list[str], rivals: list[int]
    ) -> None:
        self.intent = intent
        self.candidates = candidates
        #: local ids of other unknown-outcome creates that the same batches match
        self.rivals = rivals
        sent = _iso(intent.sent_at or 0.0)
        also = ""
        if rivals:
            also = f" (the creates of batch(es) {', '.join(map(str, rivals))} match them too)"
        super().__init__(
            path,
            f"the create of batch {intent.local_id} ({intent.request_count} requests, sent "
            f"{sent}) has an unknown outcome and {len(candidates)} batch(es) at the service "
            f"could be it: {', '.join(candidates)}{also}. Nothing was sent again. Check which "
            f"one holds this job's custom_ids (e.g. from its results), then run `python -m "
            f"pipeline status --state {path} --adopt {intent.local_id}=BATCH_ID`, or "
            f"`--release {intent.local_id}` if none does (its requests are then sent again)",
        )


async def reconcile(
    ledger: Ledger,
    client: Client,
    intents: list[BatchRecord],
    *,
    settle: float | None = None,
    since: float | None = None,
    clock_skew: float = DEFAULT_CLOCK_SKEW,
    max_latency: float = DEFAULT_MAX_LATENCY,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> ReconcileReport:
    """Settle every intent in ``intents`` (``ResumeState.pending_intents``): adopt
    the batch its create made, or release it; raise ``AmbiguousCreateError`` when
    that cannot be decided. ``since``: when the connections that sent them were
    gone at the latest (``ResumeState.takeover_at``; default: now). An intent with
    no match is released once ``settle`` seconds (default ``DEFAULT_SETTLE_SECONDS``)
    have passed since ``max(sent_at, since)``; until then the list is asked again
    at that time (``sleep`` waits, ``clock`` tells the time: both injectable)."""
    settle = _default_settle() if settle is None else settle
    since = clock() if since is None else since
    report = ReconcileReport()
    pending: list[BatchRecord] = []
    for intent in intents:
        if intent.state == "intent" or intent.sent_at is None:
            await ledger.release(intent.local_id)  # never POSTed
            report.released.append(intent.local_id)
        else:
            pending.append(intent)
    path = str(getattr(ledger, "path", "<ledger>"))
    while pending:
        listed_at = clock()
        found = await _candidates(ledger, client, pending, clock_skew, max_latency, report)
        waiting: list[BatchRecord] = []
        for intent, ids in _decide(pending, found, path):
            if ids:
                await ledger.record_created(intent.local_id, ids[0])
                adopted = msgspec.structs.replace(intent, batch_id=ids[0], state="created")
                report.adopted.append(adopted)
            elif listed_at >= _certain_at(intent, since, settle):
                await ledger.release(intent.local_id)
                report.released.append(intent.local_id)
            else:
                waiting.append(intent)
        pending = waiting
        if pending:
            await sleep(max(0.0, min(_certain_at(i, since, settle) for i in pending) - clock()))
    return report


def _certain_at(intent: BatchRecord, since: float, settle: float) -> float:
    """When the service's list is authoritative for ``intent``'s create."""
    return max(intent.sent_at or 0.0, since) + settle


def _decide(
    pending: list[BatchRecord], found: dict[int, list[str]], path: str
) -> list[tuple[BatchRecord, list[str]]]:
    """Each intent with its single candidate (or none); raise on any ambiguity."""
    for intent in pending:
        ids = found[intent.local_id]
        rivals = [
            other.local_id
            for other in pending
            if other.local_id != intent.local_id and set(found[other.local_id]) & set(ids)
        ]
        if len(ids) > 1 or rivals:
            raise AmbiguousCreateError(path, intent, ids, rivals)
    return [(intent, found[intent.local_id]) for intent in pending]


async def _candidates(
    ledger: Ledger,
    client: Client,
    pending: list[BatchRecord],
    clock_skew: float,
    max_latency: float,
    report: ReconcileReport,
) -> dict[int, list[str]]:
    """Per intent, the ids of listed batches of its size created in its window and
    not already in the ledger."""
    earliest = min(i.sent_at or 0.0 for i in pending) - clock_skew
    found: dict[int, list[str]] = {i.local_id: [] for i in pending}
    async for batch in client.list_batches():
        created = _parse_time(batch.created_at)
        if created < earliest:
            break  # newest first: everything after is older still
        report.examined += 1
        for intent in pending:
            sent = intent.sent_at or 0.0
            if _size(batch) == intent.request_count and (
                sent - clock_skew <= created <= sent + max_latency
            ):
                found[intent.local_id].append(batch.id)
    all_ids = [i for ids in found.values() for i in ids]
    if all_ids:
        known = await ledger.known_batch_ids(all_ids)
        found = {k: [i for i in ids if i not in known] for k, ids in found.items()}
    return found


def _size(batch: MessageBatch) -> int:
    return batch.request_counts.total


def _parse_time(value: str) -> float:
    parsed = datetime.fromisoformat(value)
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return parsed.timestamp()


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds")


def reconciler(
    ledger: Ledger,
    client: Client,
    *,
    settle: float | None = None,
    clock: Callable[[], float] = time.time,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> Callable[[int, int, int, float], Awaitable[str | None]]:
    """The submitter's ``reconcile(local_id, request_count, body_bytes, sent_at)``
    callback for a create that failed with an unknown outcome in this process: the
    id of the batch it made (already recorded as created), or None when it made
    none (the intent is released to the spool). Raises ``AmbiguousCreateError``."""

    async def reconcile_one(
        local_id: int, request_count: int, body_bytes: int, sent_at: float
    ) -> str | None:
        intent = BatchRecord(
            local_id=local_id,
            batch_id=None,
            state="sending",
            request_count=request_count,
            body_bytes=body_bytes,
            sent_at=sent_at,
        )
        report = await reconcile(ledger, client, [intent], settle=settle, clock=clock, sleep=sleep)
        return report.adopted[0].batch_id if report.adopted else None

    return reconcile_one


def settle_pending(
    intents: list[BatchRecord],
    send: ObjectSendStream[list[SubmittedBatch]],
    *,
    ledger: Ledger,
    client: Client,
    capacity: Capacity,
    progress: JobCounters,
    since: float | None,
    announce: Callable[[str], None],
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
) -> Coroutine[None, None, None]:
    """Reconcile the creates of unknown outcome a restart found, beside the stages.

    At once (before the stages start): their requests count as outstanding (the job
    is not done while they are unsettled) and the capacity is held full, so no new
    create is sent until they are settled (a create of the same size would make the
    match ambiguous); everything else goes on. The coroutine returned settles them:
    adopted batches go to the poller on ``send`` (a clone of the submitter's stream),
    released requests to the spool (the retry feeder sends them again), then the
    capacity is freed. ``AmbiguousCreateError`` fails the job, as on a start."""
    gate = max(capacity.limit, 1)
    capacity.force(gate)
    progress.outstanding += sum(i.request_count for i in intents)
    progress.changed()

    async def settle() -> None:
        async with send:
            report = await reconcile(ledger, client, intents, since=since, sleep=sleep)
            by_id = {i.local_id: i for i in intents}
            for record in report.adopted:
                n = record.request_count
                progress.in_flight += n
                progress.batches_in_flight += 1
                capacity.force(n)
                sent_at = record.sent_at if record.sent_at is not None else time.time()
                await send.send(
                    [SubmittedBatch(record.local_id, record.batch_id or "", n, sent_at, True)]
                )
            released = sum(by_id[i].request_count for i in report.released)
            progress.outstanding -= released
            progress.spooled += released
            capacity.release(gate)
            progress.changed()
            announce(
                f"pipeline: reconciled {len(by_id)} batch create(s) of unknown outcome: "
                f"{len(report.adopted)} found at the service, {len(report.released)} to send again"
            )

    return settle()
