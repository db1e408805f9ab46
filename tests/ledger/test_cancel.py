"""The SQLite ledger's part of a job's cancel: the intent (also from another process,
beside the process that holds the job), canceled requests held apart from written and
spooled ones, the canceled mark, and sending them again."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.ledger import SinkPosition, SQLiteLedger, read_status, request_cancel

from ._helpers import JOB, entry

if TYPE_CHECKING:
    from pathlib import Path


async def _created_batch(ledger: SQLiteLedger, n: int = 4) -> int:
    claim = await ledger.claim([entry(i) for i in range(1, n + 1)], [], checkpoint=n * 100, line=n)
    await ledger.record_sending(claim.local_id, body_bytes=10, sent_at=1.0)
    await ledger.record_created(claim.local_id, "msgbatch_1")
    await ledger.record_ended(claim.local_id)
    return claim.local_id


async def test_request_cancel_from_another_process_while_the_job_is_held(
    ledger: SQLiteLedger, state_path: Path
) -> None:
    assert not await ledger.cancel_requested()
    # the ledger fixture holds the job's lock; the request is written beside it
    assert await request_cancel(state_path) == "requested"
    assert await ledger.cancel_requested()
    assert await request_cancel(state_path) == "requested"  # idempotent
    assert (await read_status(state_path)).cancel == "requested"


async def test_canceled_requests_are_held_then_sent_again_on_purpose(
    ledger: SQLiteLedger, state_path: Path
) -> None:
    local_id = await _created_batch(ledger)
    await ledger.request_cancel()
    missing = await ledger.commit_results(
        local_id,
        output=SinkPosition(100, 1),
        written=1,
        written_ids=["req-1"],
        spool=["req-2"],
        canceled=["req-3", "req-4"],
        done=True,
    )
    assert missing == 0  # held canceled requests are not "missing" (not spooled)
    assert await ledger.unwritten(local_id, ["req-3", "req-4"]) == []
    assert await ledger.mark_canceled() == 2
    assert not await ledger.cancel_requested()
    await ledger.request_cancel()  # a completed cancel stays completed
    status = await ledger.status()
    assert (status.cancel, status.canceled, status.spooled, status.batches) == (
        "canceled",
        2,
        1,
        [],
    )
    await ledger.aclose()
    again = SQLiteLedger(state_path)
    resume = await again.open(JOB)
    assert (resume.cancel, resume.canceled) == ("canceled", 2)
    assert await again.resume_canceled() == 2
    spool = await again.take_spool(10)
    # in input order, each at its attempt (a cancel is not a failed attempt)
    assert [(s.custom_id, s.attempt) for s in spool] == [("req-2", 2), ("req-3", 1), ("req-4", 1)]
    status = await again.status()
    assert (status.cancel, status.canceled, status.spooled) == (None, 0, 3)
    await again.aclose()


async def test_a_finished_job_cannot_be_canceled(ledger: SQLiteLedger, state_path: Path) -> None:
    await ledger.mark_finished()
    await ledger.request_cancel()
    assert await request_cancel(state_path) is None
    assert (await ledger.status()).cancel is None
