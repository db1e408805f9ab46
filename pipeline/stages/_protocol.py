"""What the stages share: the stage shape, the chunk record, the in-flight capacity,
and the job's live progress (what is outstanding, what is spooled).

The runner creates one ``Capacity`` and one ``JobCounters`` per pipeline and hands them
to the stages that need them; stages never create task groups of their own.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Protocol, TypeVar

import anyio
import anyio.lowlevel
import msgspec

from ._items import Entry, Reject

if TYPE_CHECKING:
    from anyio.abc import ObjectReceiveStream, ObjectSendStream

    from ._items import RawLine

__all__ = ("Capacity", "Chunk", "JobCounters", "SourceStage", "Stage")

T_in = TypeVar("T_in", contravariant=True)
T_out = TypeVar("T_out", covariant=True)

#: ``{"requests":[`` + ``]}``: the create body's envelope around the joined entries.
BODY_HEAD = b'{"requests":['
BODY_TAIL = b"]}"
ENVELOPE_BYTES = len(BODY_HEAD) + len(BODY_TAIL)


class Stage(Protocol[T_in, T_out]):
    """The shape of every stage: ``async def stage(receive, send, /, *, ...)``.

    A stage owns its two stream ends (``async with receive, send:``), closes ``send``
    when it is done and never leaves a task behind.
    """

    async def __call__(
        self, receive: ObjectReceiveStream[T_in], send: ObjectSendStream[T_out], /
    ) -> None: ...


class SourceStage(Protocol):
    """A source of its own, for long-lived jobs: pass it as ``Pipeline(source=...)``.

    ``async def my_source(send, /, *, stop, start_line) -> None`` sends lists of
    ``RawLine`` (one encoded ``{"custom_id": ..., "params": ...}`` entry each, with
    ``line`` numbers counting on from ``start_line``, ``offset`` -1) until it runs
    dry or ``stop`` is set, then returns (the runner closes ``send`` after it).

    ``start_line`` is the last line an earlier run of the job accounted for: a
    source that can replay its input skips that many. For the open-ended pipelines
    (``QueuePipeline``, ``WatchPipeline``), whose sources cannot replay, it is the
    highest line the job holds (``Ledger.last_line``): they number on from it, so
    line numbers stay unique in the job. ``stop`` is the pipeline's graceful stop: stop reading soon after it is
    set (what was already sent is submitted or spooled). Keep each list large when
    input is plentiful (a send costs more than an item) and send at once when it
    trickles, so nothing waits behind an idle source.
    """

    async def __call__(
        self, send: ObjectSendStream[list[RawLine]], /, *, stop: anyio.Event, start_line: int
    ) -> None: ...


class Chunk(msgspec.Struct):
    """What the chunker hands the submitter: a batch-to-be (``entries``, maybe
    empty), the rejects seen since the previous chunk, and the source position
    (``checkpoint`` byte offset after input line ``line``) every item before which
    is accounted for by this chunk or an earlier one.

    A chunk is itself a list of up to ``max_batch_requests`` entries, so the
    chunker -> submitter edge carries one ``Chunk`` per send, not a list of them.
    """

    entries: list[Entry]
    rejects: list[Reject]
    checkpoint: int
    line: int
    #: the exact size of the create body these entries make
    body_bytes: int = ENVELOPE_BYTES


def body_size(entries: list[Entry]) -> int:
    """The exact byte size of the create body ``entries`` make."""
    if not entries:
        return ENVELOPE_BYTES
    return ENVELOPE_BYTES + sum(len(e.raw) for e in entries) + len(entries) - 1


def build_body(entries: list[Entry]) -> bytes:
    """Splice the entries' original bytes into a create body (no re-encoding).

    One join makes the body: the envelope goes onto the first and last lines
    (small copies), so a body several MB large is copied once, not three times."""
    if not entries:
        return BODY_HEAD + BODY_TAIL
    raws = [e.raw for e in entries]
    raws[0] = BODY_HEAD + raws[0]
    raws[-1] += BODY_TAIL
    return b",".join(raws)


class Capacity:
    """Requests allowed at the service at once, shared by the submitter (acquires
    before a create) and the results stage (releases once a batch is collected).

    Waiting here is where backpressure starts: the submitter stops taking chunks,
    the chunker's input fills, then validation's, then the source stops reading.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        #: set by ``interrupt``: waiters give up instead of waiting (graceful stop)
        self.interrupted = False
        self._changed = anyio.Event()

    def available(self, n: int) -> bool:
        """Whether ``n`` requests fit now (a request larger than the limit fits an
        empty service, so a big batch is never starved forever)."""
        return self.used == 0 or self.used + n <= self.limit

    async def acquire(self, n: int) -> bool:
        """Wait until ``n`` requests fit, then take them; False (nothing taken)
        when ``interrupt`` was called and they do not fit now."""
        while not self.available(n):
            if self.interrupted:
                return False
            await self._changed.wait()
        self.used += n
        await anyio.lowlevel.checkpoint()
        return True

    def interrupt(self) -> None:
        """Make every waiter (now and later) give up instead of waiting."""
        self.interrupted = True
        self._wake()

    def acquire_nowait(self, n: int) -> bool:
        """Take ``n`` requests if they fit now; whether they were taken."""
        if not self.available(n):
            return False
        self.used += n
        return True

    def force(self, n: int) -> None:
        """Count requests already at the service (found on resume)."""
        self.used += n

    def release(self, n: int) -> None:
        """Give back ``n`` requests and wake the waiters."""
        self.used = max(0, self.used - n)
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()


class JobCounters:
    """The job's live counters, shared by the stages and read by the runner.

    ``outstanding`` counts requests that entered the chunker and are not resolved
    yet (rejected as duplicate, results committed, or spooled); ``spooled`` counts
    requests waiting in the ledger's spool, ``deferred`` those whose custom_id the
    ledger resolves later (``ClaimResult.deferred``). The retry feeder ends the cycle
    once the source is done and all are zero. Every change wakes ``wait_changed``.
    """

    def __init__(self) -> None:
        self.read = 0
        self.rejected = 0
        self.submitted = 0
        self.batches_submitted = 0
        self.in_flight = 0
        self.batches_in_flight = 0
        self.ended = 0
        self.written = 0
        self.outstanding = 0
        self.spooled = 0
        #: requests the ledger deferred (their custom_id to be resolved with others)
        self.deferred = 0
        #: requests spooled to be sent again after their result (each time counts)
        self.retried = 0
        #: the last source line the ledger accounts for (its checkpoint: every line
        #: up to it is claimed or rejected), for sources that must know (watch)
        self.accounted_line = 0
        #: entries the retry feeder sent that no claim has taken yet (their ids:
        #: one round, at most ``max_batch_requests``)
        self.retry_unclaimed = 0
        self.retry_ids: set[str] = set()
        self.source_done = False
        self.stopping = False
        self.outcomes: dict[str, int] = {}
        #: model -> [input tokens, output tokens, cost, cache writes, cache reads]
        self.usage: dict[str, list[float]] = {}
        self.estimated_cost_usd = 0.0
        self.actual_cost_usd = 0.0
        #: models of requests or results the price table cannot price (cost 0)
        self.unpriced: set[str] = set()
        self.total: int | None = None
        self._changed = anyio.Event()
        #: set when a reject was recorded (the rejects writer drains the ledger)
        self.rejects_recorded = anyio.Event()

    def changed(self) -> None:
        """Wake every task waiting for a change."""
        self._changed.set()
        self._changed = anyio.Event()

    async def wait_changed(self, timeout: float = math.inf) -> None:
        """Wait for the next change (or ``timeout`` seconds)."""
        event = self._changed
        with anyio.move_on_after(timeout):
            await event.wait()

    def note_rejects(self, n: int) -> None:
        """``n`` more rejects are in the ledger."""
        if n:
            self.rejected += n
            self.rejects_recorded.set()

    def outcome(self, key: str, n: int = 1) -> None:
        self.outcomes[key] = self.outcomes.get(key, 0) + n

    @property
    def cycle_done(self) -> bool:
        """Source done, nothing at the service or in the stages, nothing spooled or
        deferred."""
        return (
            self.source_done
            and self.outstanding <= 0
            and self.spooled <= 0
            and self.deferred <= 0
            and self.retry_unclaimed <= 0
        )

    def note_settled(self, settled: int, released: int, rejected: int) -> None:
        """The ledger settled ``settled`` deferred requests: ``released`` of them wait
        in the spool to be sent, ``rejected`` rejects were recorded."""
        if settled or released:
            self.deferred -= settled
            self.spooled += released
            self.changed()
        self.note_rejects(rejected)
