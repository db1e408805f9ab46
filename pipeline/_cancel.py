"""Canceling a job: stop submitting, cancel every batch of the job in flight at the
service, collect what they finished, and mark the job canceled.

``JobCancel`` is the runner's collaborator for it, built with explicit arguments.
The order is what makes a cancel crash-safe and idempotent:

1. the intent goes to the ledger first (``Ledger.request_cancel``), fsynced;
2. creates of unknown outcome are settled (reconciled: a batch found at the
   service is adopted and canceled with the others; one certainly never made is
   released to the spool, where it stays);
3. every batch still ``in_progress`` at the service is asked to cancel (a batch
   that ended meanwhile answers 400: nothing to do);
4. the batches are polled until they end and collected as usual, except that a
   ``canceled`` result is held in the ledger as canceled (neither written nor
   re-sent) while succeeded and errored ones are written;
5. ``Ledger.mark_canceled``: a re-run says the job was canceled instead of
   resubmitting; ``resume_canceled`` sends the canceled requests again on purpose.

A process killed anywhere in between leaves the intent recorded: the next run of
the job (or ``pipeline cancel`` again) does all the steps again, and each is
idempotent (a cancel of a batch already canceling is a no-op at the service; a
batch collected before the crash is not in flight any more).

A running job learns of a cancel recorded by another process (``pipeline
cancel`` while a worker holds the job's lock) from ``watch``: it reads the
ledger's flag once per poll interval.
"""

from __future__ import annotations

import logging
import math
import time
from typing import TYPE_CHECKING, Any

import anyio

from ._errors import APIStatusError, BatchNotFoundError, NotFoundError, PipelineError
from .ledger._reconcile import reconcile
from .stages._items import SubmittedBatch
from .stages._protocol import Capacity
from .stages.poller import poller
from .stages.results import results

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from ._config import PipelineConfig
    from ._pricing import PriceTable
    from .api._client import Client
    from .ledger._base import BatchRecord, Ledger
    from .stages._protocol import JobCounters
    from .stages.sink import ResultSink

__all__ = ("CANCEL_CALLS_AT_ONCE", "JobCancel")

logger = logging.getLogger("pipeline")

#: Cancel calls to the service at once (a job may have hundreds of batches in flight).
CANCEL_CALLS_AT_ONCE = 8


class JobCancel:
    """The cancel of one job, as the runner performs it (see the module docstring).

    **Parameters:**

    * ``ledger``, ``client``: the job's own (open).
    * ``config``: the job's config (poll interval, attempts, canceled policy).
    * ``progress``: the job's live counters; the collection counts into them.
    * ``prices``: prices the actual cost of the results collected.
    * ``sleep``: the waits of a reconcile of unknown-outcome creates (injectable).
    """

    def __init__(
        self,
        *,
        ledger: Ledger,
        client: Client,
        config: PipelineConfig,
        progress: JobCounters,
        prices: PriceTable,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    ) -> None:
        self.ledger = ledger
        self.client = client
        self.config = config
        self.progress = progress
        self.prices = prices
        self.sleep = sleep
        #: set once the job is being canceled: the results stage holds canceled
        #: results instead of writing them
        self.canceling = anyio.Event()
        #: batches asked to cancel at the service, over this cancel
        self.batches_canceled = 0
        #: local ids adopted by reconciliation (their results are checked as ours)
        self._adopted: set[int] = set()

    async def watch(self, on_request: Callable[[], None]) -> None:
        """Until the job is canceling: check the ledger for a cancel recorded by
        another process once per poll interval, and call ``on_request`` when there
        is one. Then record the intent and cancel the batches at the service at
        once (the stages are still stopping; ``complete`` does it again after)."""
        while not self.canceling.is_set():
            with anyio.move_on_after(self.config.poll_interval):
                await self.canceling.wait()
            if not self.canceling.is_set() and await self.ledger.cancel_requested():
                on_request()
        await self.ledger.request_cancel()
        try:
            await self.cancel_at_service((await self.ledger.status()).batches)
        except PipelineError as exc:  # ``complete`` tries again, and fails the job then
            logger.warning("canceling the batches at the service failed for now: %s", exc)

    async def cancel_at_service(self, batches: list[BatchRecord]) -> int:
        """Ask the service to cancel each batch still in progress; how many were
        asked. A batch that has ended already (400) needs nothing."""
        created = [b for b in batches if b.state == "created" and b.batch_id]
        limiter = anyio.CapacityLimiter(CANCEL_CALLS_AT_ONCE)
        asked = 0

        async def cancel_one(batch: BatchRecord) -> None:
            nonlocal asked
            assert batch.batch_id is not None
            async with limiter:
                try:
                    await self.client.cancel_batch(batch.batch_id)
                except NotFoundError as exc:
                    raise BatchNotFoundError(batch.batch_id, batch.local_id) from exc
                except APIStatusError as exc:
                    if exc.status_code != 400:  # 400: ended already, nothing to cancel
                        raise
                    return
            asked += 1
            logger.info("batch canceling", extra={"batch_id": batch.batch_id})

        async with anyio.create_task_group() as tg:
            for batch in created:
                tg.start_soon(cancel_one, batch)
        self.batches_canceled += asked
        return asked

    async def complete(self, sink: ResultSink) -> int:
        """Do every step of the cancel (module docstring) and collect into ``sink``;
        how many requests the job holds as canceled."""
        self.canceling.set()
        await self.ledger.request_cancel()
        batches = await self._settle_creates()
        await self.cancel_at_service(batches)
        if batches:
            await self._collect(batches, sink)
        return await self.ledger.mark_canceled()

    async def _settle_creates(self) -> list[BatchRecord]:
        """The batches in flight, creates of unknown outcome settled first."""
        in_flight = (await self.ledger.status()).batches
        pending = [b for b in in_flight if b.state in ("intent", "sending")]
        batches = [b for b in in_flight if b.state in ("created", "ended")]
        if pending:
            report = await reconcile(self.ledger, self.client, pending, sleep=self.sleep)
            batches += report.adopted
            self._adopted.update(b.local_id for b in report.adopted)
        return batches

    async def _collect(self, batches: list[BatchRecord], sink: ResultSink) -> None:
        """Poll ``batches`` until they end and collect them (the poller and the
        results stage, fed with these batches only)."""
        p = self.progress
        p.in_flight = sum(b.request_count for b in batches)
        p.batches_in_flight = len(batches)
        p.outstanding = sum(b.request_count - b.results_written for b in batches)
        capacity = Capacity(max(self.config.max_in_flight, p.in_flight))
        capacity.force(p.in_flight)
        watched = [
            SubmittedBatch(
                b.local_id,
                b.batch_id or "",
                b.request_count,
                b.sent_at if b.sent_at is not None else time.time(),
                b.local_id in self._adopted,
            )
            for b in batches
        ]
        send_in, recv_in = anyio.create_memory_object_stream[Any](math.inf)
        send_ended, recv_ended = anyio.create_memory_object_stream[Any](len(batches))
        send_in.close()  # nothing new: only the batches already in flight
        async with anyio.create_task_group() as tg:
            # no ``progress`` for the poller: the job is stopping, but these are polled
            tg.start_soon(
                lambda: poller(
                    recv_in,
                    send_ended,
                    client=self.client,
                    ledger=self.ledger,
                    config=self.config,
                    resumed=watched,
                )
            )
            tg.start_soon(
                lambda: results(
                    recv_ended,
                    client=self.client,
                    ledger=self.ledger,
                    sink=sink,
                    config=self.config,
                    capacity=capacity,
                    progress=p,
                    resumed={
                        b.local_id: b.request_count - b.results_written
                        for b in batches
                        if b.results_written
                    },
                    prices=self.prices,
                    canceling=self.canceling,
                )
            )
