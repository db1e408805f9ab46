"""Poller: one task watches every batch in flight and hands on each batch once its
processing has ended.

There is no push notification, so polling is the only way. Each batch is retrieved
on its own adaptive schedule that scales with the batch's age. A young batch (not
yet ``poll_interval`` old) is looked at whenever its age has doubled, the first time
at an eighth of ``poll_interval`` (at most three quick looks: a short batch ends in
well under the floor, and its results should not wait a whole interval). From then
on the interval is ``poll_interval`` (the floor), grows with the batch's age (a
tenth of it) up to ``max_poll_interval``, and drops back to the floor when the
batch's counts moved since the last look. Between looks the poller also waits for new
batches and takes each in as it arrives, so a new batch never waits behind an old
batch's long interval, and a job whose batches take hours wakes only to look at them.
A batch's age is measured
in wall-clock time (``wall_clock``, against ``SubmittedBatch.submitted_at``, which
survives a restart); the schedule itself runs on the monotonic ``clock``. Failed polls (429, 5xx,
connection errors, after the client's own retries) back off the whole poller,
doubling up to ``max_poll_interval``; they never fail the job.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING

import anyio

from .._errors import (
    TRANSIENT_ERRORS,
    BatchNotFoundError,
    NotFoundError,
)
from ._items import EndedBatch, SubmittedBatch

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from anyio.abc import ObjectSendStream
    from anyio.streams.memory import MemoryObjectReceiveStream

    from .._config import PipelineConfig
    from ..api._client import Client
    from ..api._types import RequestCounts
    from ..ledger._base import Ledger
    from ._protocol import JobCounters

__all__ = ("QUICK_LOOK", "Poller", "next_interval", "poller")

logger = logging.getLogger("pipeline.poller")
#: The first look at a new batch, as a fraction of the floor (then at doubling ages).
QUICK_LOOK = 0.125


def next_interval(
    *, age: float, moved: bool, floor: float, ceiling: float, previous: float | None = None
) -> float:
    """Seconds until the next look at a batch ``age`` seconds old: quick looks at
    doubling ages while it is younger than ``floor``, then ``floor`` and up."""
    if age < floor:
        return min(floor, max(floor * QUICK_LOOK, age))
    if moved or previous is None:
        return floor
    return min(ceiling, max(floor, age / 10.0, previous))


class _Watched:
    __slots__ = ("batch", "counts", "due", "interval")

    def __init__(self, batch: SubmittedBatch, due: float, interval: float) -> None:
        self.batch = batch
        self.due = due
        self.interval = interval
        self.counts: RequestCounts | None = None


class Poller:
    """The batches in flight and their schedule."""

    def __init__(
        self,
        *,
        client: Client,
        ledger: Ledger,
        config: PipelineConfig,
        clock: Callable[[], float],
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.config = config
        #: monotonic: when each batch is due
        self.clock = clock
        #: wall-clock: how old each batch is
        self.wall_clock = wall_clock
        self.watched: dict[int, _Watched] = {}
        self.backoff = 0.0

    def add(self, batches: list[SubmittedBatch]) -> None:
        now, wall = self.clock(), self.wall_clock()
        floor, ceiling = self.config.poll_interval, self.config.max_poll_interval
        for b in batches:
            age = max(0.0, wall - b.submitted_at)
            interval = next_interval(age=age, moved=False, floor=floor, ceiling=ceiling)
            self.watched[b.local_id] = _Watched(b, now + interval, interval)

    def next_due(self) -> float:
        return min((w.due for w in self.watched.values()), default=math.inf)

    async def poll_due(self) -> list[EndedBatch]:
        """Retrieve every batch that is due; those that ended."""
        ended: list[EndedBatch] = []
        now = self.clock()
        for w in sorted(self.watched.values(), key=lambda w: w.due):
            if w.due > now:
                break
            try:
                batch = await self.client.retrieve_batch(w.batch.batch_id)
            except NotFoundError as exc:
                raise BatchNotFoundError(w.batch.batch_id, w.batch.local_id) from exc
            except TRANSIENT_ERRORS as exc:
                self.backoff = min(
                    self.config.max_poll_interval, max(self.config.poll_interval, self.backoff * 2)
                )
                logger.warning("poll failed, backing off %.1f s: %s", self.backoff, exc)
                for other in self.watched.values():
                    other.due = max(other.due, self.clock() + self.backoff)
                break
            self.backoff = 0.0
            if batch.processing_status == "ended":
                del self.watched[w.batch.local_id]
                await self.ledger.record_ended(w.batch.local_id)
                ended.append(
                    EndedBatch(
                        w.batch.local_id,
                        batch.id,
                        w.batch.request_count,
                        batch.results_url,
                        w.batch.adopted,
                    )
                )
                continue
            moved = w.counts is not None and batch.request_counts != w.counts
            w.counts = batch.request_counts
            w.interval = next_interval(
                age=self.wall_clock() - w.batch.submitted_at,
                moved=moved,
                floor=self.config.poll_interval,
                ceiling=self.config.max_poll_interval,
                previous=w.interval,
            )
            w.due = self.clock() + w.interval
        return ended


async def poller(
    receive: MemoryObjectReceiveStream[list[SubmittedBatch]],
    send: ObjectSendStream[list[EndedBatch]],
    /,
    *,
    client: Client,
    ledger: Ledger,
    config: PipelineConfig,
    progress: JobCounters | None = None,
    resumed: list[SubmittedBatch] | None = None,
    clock: Callable[[], float] = anyio.current_time,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    wall_clock: Callable[[], float] = time.time,
) -> None:
    """Watch batches until they end; end once the input is closed and nothing is in
    flight (or, when the pipeline is stopping, once the input is closed: batches
    left at the service are collected on the next start). ``clock`` schedules the
    looks (monotonic); ``wall_clock`` dates the batches (``submitted_at``)."""
    state = Poller(client=client, ledger=ledger, config=config, clock=clock, wall_clock=wall_clock)
    if resumed:
        state.add(resumed)
        for w in state.watched.values():
            w.due = clock()  # look at once: they may have ended while we were away
    open_input = True
    async with receive, send:
        while open_input or (state.watched and not _stopping(progress)):
            if _stopping(progress) or (not state.watched and open_input):
                # nothing to watch (or stopping: no more polls): wait for input
                try:
                    state.add(await receive.receive())
                except anyio.EndOfStream:
                    open_input = False
                continue
            open_input = _drain(receive, state)
            delay = state.next_due() - clock()
            if delay > 0:
                if open_input:
                    # until the next look is due, or a batch arrives (its quick looks)
                    open_input = await _sleep_or_take(receive, state, delay, sleep)
                else:
                    await sleep(delay)
                if state.next_due() > clock():
                    continue
            ended = await state.poll_due()
            if ended:
                await send.send(ended)


def _stopping(progress: JobCounters | None) -> bool:
    return progress is not None and progress.stopping


async def _sleep_or_take(
    receive: MemoryObjectReceiveStream[list[SubmittedBatch]],
    state: Poller,
    delay: float,
    sleep: Callable[[float], Awaitable[None]],
) -> bool:
    """Sleep ``delay`` seconds, or less if batches arrive (they are taken in); whether
    the input is still open. A job whose batches take hours wakes only to look at
    them, not every quick-look interval in case a batch came (measured: a third of
    what such a job spends waiting)."""
    open_input = True
    async with anyio.create_task_group() as tg:

        async def wake() -> None:
            await sleep(delay)
            tg.cancel_scope.cancel()

        tg.start_soon(wake)
        try:
            state.add(await receive.receive())
            open_input = _drain(receive, state)
        except anyio.EndOfStream:
            open_input = False
        tg.cancel_scope.cancel()
    return open_input


def _drain(receive: MemoryObjectReceiveStream[list[SubmittedBatch]], state: Poller) -> bool:
    """Take every batch waiting in the input without blocking; whether it is open."""
    while True:
        try:
            state.add(receive.receive_nowait())
        except anyio.WouldBlock:
            return True
        except anyio.EndOfStream:
            return False
