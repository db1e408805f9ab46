"""Reconciliation of creates with an unknown outcome, against a fake batch list."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import pytest

from pipeline.api import MessageBatch, RequestCounts
from pipeline.ledger import AmbiguousCreateError, SQLiteLedger, reconcile, reconciler

from ._helpers import JOB, entry

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

T0 = 1_800_000_000.0  # "now" of the fake world


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def batch(batch_id: str, count: int, created: float) -> MessageBatch:
    return MessageBatch(
        id=batch_id,
        processing_status="in_progress",
        request_counts=RequestCounts(processing=count),
        created_at=iso(created),
        expires_at=iso(created + 86400),
    )


class FakeClient:
    """Lists ``batches`` newest first, and counts how many it handed out."""

    def __init__(self, batches: list[MessageBatch]) -> None:
        self.batches = sorted(batches, key=lambda b: b.created_at, reverse=True)
        self.listed = 0
        self.listings = 0

    async def list_batches(self) -> AsyncIterator[MessageBatch]:
        self.listings += 1
        for b in self.batches:
            self.listed += 1
            yield b


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds


async def sent_intent(led: SQLiteLedger, first: int, n: int, sent_at: float) -> int:
    es = [entry(i) for i in range(first, first + n)]
    local = (await led.claim(es, [], checkpoint=(first + n) * 100, line=first + n - 1)).local_id
    await led.record_sending(local, body_bytes=100 * n, sent_at=sent_at)
    return local


async def test_the_one_matching_batch_is_adopted(ledger: SQLiteLedger) -> None:
    local = await sent_intent(ledger, 1, 3, T0 - 5)
    client = FakeClient(
        [
            batch("msgbatch_other_size", 4, T0 - 4),
            batch("msgbatch_ours", 3, T0 - 4),
            batch("msgbatch_too_old", 3, T0 - 3600),
            batch("msgbatch_older_still", 3, T0 - 7200),
        ]
    )
    intents = (await ledger.status()).batches
    report = await reconcile(ledger, client, intents, clock=Clock(T0))  # type: ignore[arg-type]
    assert [(b.local_id, b.batch_id, b.state) for b in report.adopted] == [
        (local, "msgbatch_ours", "created")
    ]
    assert report.released == []
    assert client.listed == 3  # stopped at the first batch older than the window
    [rec] = (await ledger.status()).batches
    assert (rec.batch_id, rec.state) == ("msgbatch_ours", "created")


async def test_a_batch_already_in_the_ledger_is_not_a_candidate(ledger: SQLiteLedger) -> None:
    known = await sent_intent(ledger, 1, 3, T0 - 6)
    await ledger.record_created(known, "msgbatch_known")
    local = await sent_intent(ledger, 4, 3, T0 - 5)
    client = FakeClient([batch("msgbatch_known", 3, T0 - 6), batch("msgbatch_new", 3, T0 - 5)])
    intents = [b for b in (await ledger.status()).batches if b.state == "sending"]
    report = await reconcile(ledger, client, intents, clock=Clock(T0))  # type: ignore[arg-type]
    assert [(b.local_id, b.batch_id) for b in report.adopted] == [(local, "msgbatch_new")]


async def test_no_match_after_settling_releases_to_the_spool(ledger: SQLiteLedger) -> None:
    local = await sent_intent(ledger, 1, 2, T0 - 5)
    never_sent = (await ledger.claim([entry(9)], [], checkpoint=900, line=9)).local_id
    clock = Clock(T0)
    client = FakeClient([batch("msgbatch_other", 7, T0 - 4)])
    intents = (await ledger.status()).batches
    report = await reconcile(
        ledger,
        client,  # type: ignore[arg-type]
        intents,
        settle=30.0,
        since=T0 - 2,  # the sender's connection was gone by then (a restart)
        clock=clock,
        sleep=clock.sleep,
    )
    assert report.adopted == []
    assert sorted(report.released) == sorted([local, never_sent])
    assert client.listings == 2  # listed again once the list was authoritative
    assert clock.now == T0 - 2 + 30.0
    assert [s.custom_id for s in await ledger.take_spool(10)] == ["req-9", "req-1", "req-2"]
    assert (await ledger.status()).batches == []


async def test_a_batch_appearing_while_settling_is_adopted(ledger: SQLiteLedger) -> None:
    local = await sent_intent(ledger, 1, 2, T0 - 1)
    clock = Clock(T0)
    client = FakeClient([])

    async def sleep(seconds: float) -> None:
        client.batches = [batch("msgbatch_late", 2, T0)]  # the service caught up
        await clock.sleep(seconds)

    report = await reconcile(
        ledger,
        client,  # type: ignore[arg-type]
        (await ledger.status()).batches,
        settle=10.0,
        clock=clock,
        sleep=sleep,
    )
    assert [(b.local_id, b.batch_id) for b in report.adopted] == [(local, "msgbatch_late")]
    assert report.released == []


async def test_two_candidates_is_a_loud_error_and_nothing_changes(ledger: SQLiteLedger) -> None:
    local = await sent_intent(ledger, 1, 3, T0 - 5)
    client = FakeClient([batch("msgbatch_a", 3, T0 - 5), batch("msgbatch_b", 3, T0 - 4)])
    intents = (await ledger.status()).batches
    with pytest.raises(AmbiguousCreateError) as info:
        await reconcile(ledger, client, intents, clock=Clock(T0))  # type: ignore[arg-type]
    message = str(info.value)
    assert "msgbatch_a" in message
    assert "msgbatch_b" in message
    assert f"--adopt {local}=BATCH_ID" in message
    [rec] = (await ledger.status()).batches
    assert (rec.state, rec.batch_id) == ("sending", None)
    assert await ledger.take_spool(10) == []


async def test_one_batch_matching_two_intents_is_ambiguous(ledger: SQLiteLedger) -> None:
    a = await sent_intent(ledger, 1, 3, T0 - 5)
    b = await sent_intent(ledger, 4, 3, T0 - 5)
    client = FakeClient([batch("msgbatch_a", 3, T0 - 5)])
    with pytest.raises(AmbiguousCreateError, match=f"batch\\(es\\) {b} match them too") as info:
        await reconcile(
            ledger,
            client,  # type: ignore[arg-type]
            (await ledger.status()).batches,
            clock=Clock(T0),
        )
    assert (info.value.intent.local_id, info.value.candidates, info.value.rivals) == (
        a,
        ["msgbatch_a"],
        [b],
    )


async def test_reconciler_callback_for_the_submitter(ledger: SQLiteLedger) -> None:
    local = await sent_intent(ledger, 1, 3, T0 - 5)
    client = FakeClient([batch("msgbatch_ours", 3, T0 - 5)])
    callback = reconciler(ledger, client, clock=Clock(T0))  # type: ignore[arg-type]
    assert await callback(local, 3, 300, T0 - 5) == "msgbatch_ours"
    await ledger.record_created(local, "msgbatch_ours")  # the submitter records it again
    status = await ledger.status()
    assert status.submitted == 3  # counted once
    gone = await sent_intent(ledger, 4, 1, T0 - 100)
    clock = Clock(T0)
    none = reconciler(ledger, FakeClient([]), clock=clock, sleep=clock.sleep)  # type: ignore[arg-type]
    assert await none(gone, 1, 100, T0 - 100) is None
    assert [s.custom_id for s in await ledger.take_spool(10)] == ["req-4"]


async def test_a_restart_long_after_the_send_waits_only_the_margin(ledger: SQLiteLedger) -> None:
    """The send was an hour ago; this worker took over now: the list is authoritative
    ``DEFAULT_SETTLE_SECONDS`` (10 s) after the takeover, not a minute after every
    start."""
    local = await sent_intent(ledger, 1, 2, T0 - 3600)
    clock = Clock(T0)
    client = FakeClient([])
    report = await reconcile(
        ledger,
        client,  # type: ignore[arg-type]
        (await ledger.status()).batches,
        since=T0,
        clock=clock,
        sleep=clock.sleep,
    )
    assert report.released == [local]
    assert clock.now == T0 + 10.0
    assert client.listings == 2


async def test_a_crash_loop_still_settles_the_create(state_path: Path) -> None:
    """A worker killed again and again, each start shorter than the margin: the
    ledger keeps the first takeover's time over restarts, so once the margin has
    passed since then, a start settles the create with one listing and no wait
    (before: every start waited a minute from the send, and none got there)."""
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    local = await sent_intent(led, 1, 2, time.time() - 1)
    await led.aclose()
    takeovers = []
    for _ in range(3):  # three restarts, each killed before settling anything
        led = SQLiteLedger(state_path)
        resume = await led.open(JOB)
        assert [i.local_id for i in resume.pending_intents] == [local]
        takeovers.append(resume.takeover_at)
        await led.aclose()
    first = takeovers[0]
    assert first is not None
    assert takeovers == [first] * 3
    led = SQLiteLedger(state_path)
    resume = await led.open(JOB)
    clock = Clock(first + 10.5)  # this start comes 10.5 s after the first takeover

    async def no_sleep(seconds: float) -> None:
        raise AssertionError(f"waited {seconds} s")

    report = await reconcile(
        led,
        FakeClient([]),  # type: ignore[arg-type]
        resume.pending_intents,
        since=resume.takeover_at,
        clock=clock,
        sleep=no_sleep,
    )
    assert report.released == [local]
    assert [s.custom_id for s in await led.take_spool(10)] == ["req-1", "req-2"]
    await led.aclose()
    led = SQLiteLedger(state_path)  # settled: nothing pending, no takeover to keep
    resume = await led.open(JOB)
    assert (resume.pending_intents, resume.takeover_at) == ([], None)
    await led.aclose()
