"""SQLiteLedger: every protocol method, its durability across reopen, and misuse."""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import pytest

from pipeline._errors import UsageError
from pipeline.ledger import SinkPosition, SQLiteLedger, read_status

from ._helpers import JOB, entry, reject

if TYPE_CHECKING:
    from pathlib import Path


async def reopen(led: SQLiteLedger) -> SQLiteLedger:
    await led.aclose()
    again = SQLiteLedger(led.path)
    return again


async def test_fresh_open_then_resume_reports_the_same_job(state_path: Path) -> None:
    led = SQLiteLedger(state_path)
    state = await led.open(JOB)
    assert state.fresh
    assert not state.finished
    assert (state.source_offset, state.source_line, state.spooled) == (0, 0, 0)
    await led.aclose()
    led = SQLiteLedger(state_path)
    state = await led.open(JOB)
    await led.aclose()
    assert not state.fresh


async def test_claim_records_an_intent_and_moves_the_checkpoint(ledger: SQLiteLedger) -> None:
    result = await ledger.claim([entry(2), entry(3)], [reject(1)], checkpoint=300, line=3)
    assert result.local_id > 0
    assert result.duplicates == []
    status = await ledger.status()
    assert (status.read, status.rejected, status.source_offset) == (3, 1, 300)
    [batch] = status.batches
    assert (batch.local_id, batch.state, batch.request_count) == (result.local_id, "intent", 2)
    assert await ledger.attempts(["req-2", "req-3", "nope"]) == {"req-2": 1, "req-3": 1}


async def test_duplicates_across_claims_and_within_one_become_rejects(
    ledger: SQLiteLedger,
) -> None:
    first = await ledger.claim([entry(1), entry(2)], [], checkpoint=200, line=2)
    second = await ledger.claim(
        [entry(3, cid="req-1"), entry(4), entry(5, cid="req-4")], [], checkpoint=500, line=5
    )
    assert second.duplicates == [0, 2]
    assert second.local_id != first.local_id
    rejects = await ledger.rejects_after(0, 10)
    assert [(r.line, r.custom_id) for r in rejects] == [(3, "req-1"), (5, "req-4")]
    assert rejects[0].error.message == "custom_id 'req-1' already used on line 1"
    assert rejects[1].error.message == "custom_id 'req-4' already used on line 4"
    status = await ledger.status()
    assert [b.request_count for b in status.batches] == [2, 1]


async def test_duplicates_are_found_across_merged_runs_and_a_reopen(state_path: Path) -> None:
    # 80 claims of 3: ids that stop going up, then runs of keys merged (32 a level); an id of
    # the first claim is still found, with its first line, before and after a reopen
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    for n in range(1, 241, 3):
        claim = await ledger.claim(
            [entry(n), entry(n + 1), entry(n + 2)], [], checkpoint=(n + 2) * 100, line=n + 2
        )
        assert claim.duplicates == []
    for again in (False, True):
        if again:
            ledger = await reopen(ledger)
            await ledger.open(JOB)
        claim = await ledger.claim(
            [entry(300, cid="req-2"), entry(301, cid="req-239")], [], checkpoint=0, line=0
        )
        assert claim.duplicates == [0, 1]
        assert await ledger.attempts(["req-1", "req-240", "req-999"]) == {"req-1": 1, "req-240": 1}
    rejects = await ledger.rejects_after(0, 10)
    assert rejects[0].error.message == "custom_id 'req-2' already used on line 2"
    assert rejects[1].error.message == "custom_id 'req-239' already used on line 239"
    await ledger.aclose()


@pytest.mark.parametrize("tamper", [None, "drop", "stale"])
async def test_ids_in_order_are_still_checked_after_a_reopen_and_any_later_claim(
    state_path: Path, tamper: str | None
) -> None:
    # claims whose ids go up are taken as new without a lookup; an id coming again
    # after a reopen is a duplicate of its first line, also when the state's note of
    # the greatest id is gone or older than the ids held (as a writer that does not
    # keep the note leaves it)
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    for n in range(1, 61, 3):
        batch = [entry(i, cid=f"r-{i:03d}") for i in range(n, n + 3)]
        claim = await ledger.claim(batch, [], checkpoint=(n + 2) * 100, line=n + 2)
        assert claim.duplicates == []
    ledger = await reopen(ledger)
    with sqlite3.connect(state_path) as db:
        note = db.execute("SELECT value FROM meta WHERE key = 'ids_top'").fetchone()
    db.close()
    await ledger.open(JOB)
    claim = await ledger.claim([entry(61, cid="r-070")], [], checkpoint=6100, line=61)
    assert claim.duplicates == []
    ledger = await reopen(ledger)
    if tamper is not None:
        with sqlite3.connect(state_path) as db:
            db.execute("DELETE FROM meta WHERE key = 'ids_top'")
            if tamper == "stale":
                db.execute("INSERT INTO meta VALUES ('ids_top', ?)", note)
        db.close()
    await ledger.open(JOB)
    # new ids above all the others and one below (looked up in the runs directly
    # while the ids still go up), then an id seen since the reopen
    batch = [entry(63 + i, cid=f"r-{80 + i:03d}") for i in range(40)]
    claim = await ledger.claim(
        [entry(62, cid="r-070"), *batch, entry(103, cid="r-002")], [], checkpoint=0, line=0
    )
    # without the note the ids are hashed (the filter rebuilt): its copies are
    # deferred, then resolved together, with the same rejects
    assert (claim.duplicates, claim.deferred) == (
        ([0, 41], []) if tamper is None else ([], [0, 41])
    )
    claim = await ledger.claim([entry(104, cid="r-090")], [], checkpoint=0, line=0)
    assert (claim.duplicates, claim.deferred) == (([0], []) if tamper is None else ([], [0]))
    settled = await ledger.resolve_deferred()
    assert (settled.settled, settled.released, settled.rejected) == (
        (0, 0, 0) if tamper is None else (3, 0, 3)
    )
    rejects = await ledger.rejects_after(0, 10)
    assert [r.error.message for r in rejects] == [
        "custom_id 'r-070' already used on line 61",
        "custom_id 'r-002' already used on line 2",
        "custom_id 'r-090' already used on line 73",
    ]
    await ledger.aclose()


async def test_claim_of_only_duplicates_records_no_batch(ledger: SQLiteLedger) -> None:
    await ledger.claim([entry(1)], [], checkpoint=100, line=1)
    result = await ledger.claim([entry(2, cid="req-1")], [], checkpoint=200, line=2)
    assert result.local_id == 0
    assert result.duplicates == [0]
    assert len((await ledger.status()).batches) == 1


async def test_lines_read_again_after_a_restart_are_skipped_and_rejected_once(
    ledger: SQLiteLedger,
) -> None:
    # the first run claimed lines 2 and 4 past a line still held (1), and rejected 3
    first = await ledger.claim([entry(2), entry(4)], [reject(3)], checkpoint=0, line=0)
    assert first.rejected == 1
    # the restart reads from the checkpoint again: 1 is new, 2 and 4 are accounted for
    again = await ledger.claim(
        [entry(1), entry(2), entry(4), entry(5, cid="req-2")], [reject(3)], checkpoint=500, line=5
    )
    assert again.skipped == [1, 2]
    assert again.duplicates == [3]  # the same custom_id on another line is a duplicate
    assert again.rejected == 1  # the duplicate; line 3's reject was recorded already
    assert await ledger.record_rejects([reject(3)], checkpoint=500, line=5) == 0
    rejects = await ledger.rejects_after(0, 10)
    assert [(r.line, r.custom_id) for r in rejects] == [(3, None), (5, "req-2")]
    status = await ledger.status()
    assert [b.request_count for b in status.batches] == [2, 1]
    assert status.rejected == 2


async def test_batch_life_cycle_and_counters_survive_reopen(ledger: SQLiteLedger) -> None:
    local = (
        await ledger.claim([entry(n) for n in range(1, 5)], [], checkpoint=400, line=4)
    ).local_id
    await ledger.record_sending(local, body_bytes=1234, sent_at=1000.0)
    await ledger.record_created(local, "msgbatch_1")
    led = await reopen(ledger)
    state = await led.open(JOB)
    [batch] = state.batches
    assert (batch.batch_id, batch.state, batch.body_bytes, batch.sent_at) == (
        "msgbatch_1",
        "created",
        1234,
        1000.0,
    )
    assert state.pending_intents == []
    await led.record_ended(local)
    await led.record_ended(local)  # idempotent: counted once
    await led.record_output_start(local, 0)
    await led.commit_results(local, output=SinkPosition(300, 3), written=3)
    await led.record_output_start(local, 999)  # the first start is kept
    await led.commit_results(local, output=SinkPosition(400, 4), written=1, done=True)
    status = await led.status()
    assert (status.submitted, status.ended, status.written) == (4, 4, 4)
    assert status.batches == []
    led = await reopen(led)
    state = await led.open(JOB)
    assert state.batches == []
    assert state.output == SinkPosition(400, 4)
    await led.aclose()


async def test_pending_intents_are_reported_until_settled(ledger: SQLiteLedger) -> None:
    a = (await ledger.claim([entry(1)], [], checkpoint=100, line=1)).local_id
    b = (await ledger.claim([entry(2)], [], checkpoint=200, line=2)).local_id
    await ledger.record_sending(b, body_bytes=10, sent_at=5.0)
    led = await reopen(ledger)
    state = await led.open(JOB)
    assert [(i.local_id, i.state) for i in state.pending_intents] == [(a, "intent"), (b, "sending")]
    assert state.batches == []
    await led.aclose()


async def test_resplit_moves_requests_into_new_intents(ledger: SQLiteLedger) -> None:
    local = (
        await ledger.claim([entry(n) for n in range(1, 6)], [], checkpoint=500, line=5)
    ).local_id
    await ledger.record_sending(local, body_bytes=10, sent_at=1.0)
    parts = [["req-1", "req-2"], ["req-3", "req-4", "req-5"]]
    new = await ledger.resplit(local, parts)
    batches = (await ledger.status()).batches
    assert [(b.local_id, b.state, b.request_count) for b in batches] == [
        (new[0], "intent", 2),
        (new[1], "intent", 3),
    ]
    with pytest.raises(UsageError):  # the old intent is gone
        await ledger.record_created(local, "msgbatch_x")
    await ledger.release(new[0])
    assert [i.custom_id for i in await ledger.take_spool(10)] == ["req-1", "req-2"]


async def test_resplit_that_loses_requests_fails_and_changes_nothing(
    ledger: SQLiteLedger,
) -> None:
    local = (await ledger.claim([entry(1), entry(2)], [], checkpoint=200, line=2)).local_id
    with pytest.raises(UsageError, match="moved 1 of its 2 requests"):
        await ledger.resplit(local, [["req-1"]])
    [batch] = (await ledger.status()).batches
    assert (batch.local_id, batch.request_count) == (local, 2)  # rolled back


async def test_reject_batch_turns_its_requests_into_rejects(ledger: SQLiteLedger) -> None:
    await ledger.claim([entry(2)], [reject(1)], checkpoint=200, line=2)
    local = (await ledger.claim([entry(3), entry(4)], [], checkpoint=400, line=4)).local_id
    await ledger.reject_batch(local, "invalid_request_error", "refused")
    rejects = await ledger.rejects_after(1, 10)
    assert [(r.line, r.custom_id, r.error.message) for r in rejects] == [
        (3, "req-3", "refused"),
        (4, "req-4", "refused"),
    ]
    status = await ledger.status()
    assert status.rejected == 3
    assert [b.state for b in status.batches] == ["intent"]
    # a rejected custom_id is still taken: a later line with it is a duplicate
    dup = await ledger.claim([entry(5, cid="req-3")], [], checkpoint=500, line=5)
    assert dup.duplicates == [0]


async def test_release_spools_and_a_reclaim_is_not_a_duplicate(ledger: SQLiteLedger) -> None:
    local = (
        await ledger.claim([entry(1), entry(2, iterable=True)], [], checkpoint=200, line=2)
    ).local_id
    await ledger.release(local)
    spool = await ledger.take_spool(10)
    assert [(s.custom_id, s.line, s.attempt, s.offset, s.length) for s in spool] == [
        ("req-1", 1, 1, 0, 100),
        ("req-2", 2, 1, -1, len(entry(2).raw)),
    ]
    assert spool[0].raw is None  # a file's line is read back from the source
    assert spool[1].raw == entry(2).raw  # an iterable's entry is carried
    assert (await ledger.take_spool(10)) == spool  # still spooled until claimed
    again = await ledger.claim([entry(1), entry(2, iterable=True)], [], checkpoint=0, line=0)
    assert again.duplicates == []
    assert await ledger.take_spool(10) == []
    status = await ledger.status()
    assert (status.spooled, status.read, status.source_offset) == (0, 2, 200)


async def test_same_custom_id_on_another_line_is_not_the_spooled_request(
    ledger: SQLiteLedger,
) -> None:
    local = (await ledger.claim([entry(1)], [], checkpoint=100, line=1)).local_id
    await ledger.release(local)
    result = await ledger.claim([entry(7, cid="req-1")], [], checkpoint=700, line=7)
    assert result.duplicates == [0]
    assert len(await ledger.take_spool(10)) == 1


async def test_a_collected_batch_spools_the_requests_it_got_no_result_for(
    ledger: SQLiteLedger,
) -> None:
    local = (
        await ledger.claim([entry(n) for n in range(1, 6)], [], checkpoint=500, line=5)
    ).local_id
    await ledger.record_created(local, "msgbatch_1")
    await ledger.record_ended(local)
    first = await ledger.commit_results(
        local, output=SinkPosition(100, 1), written=1, written_ids=["req-1"]
    )
    assert first == 0  # not done: nothing is missing yet
    missing = await ledger.commit_results(
        local,
        output=SinkPosition(200, 2),
        written=1,
        spool=["req-3"],
        done=True,
        written_ids=["req-2"],
    )
    # req-4 and req-5 got no line at all: sent again, not lost
    assert missing == 2
    spooled = [s.custom_id for s in await ledger.take_spool(10)]
    assert sorted(spooled) == ["req-3", "req-4", "req-5"]
    assert (await ledger.status()).batches == []


async def test_the_estimated_spend_of_claims_is_kept_for_the_job(ledger: SQLiteLedger) -> None:
    first, second = entry(1), entry(2)
    first.cost_usd, second.cost_usd = 0.25, 0.000_001_5
    await ledger.claim([first, second], [], checkpoint=200, line=2)
    again = entry(1)  # read again after a restart: already counted, not again
    again.cost_usd = 0.25
    await ledger.claim([again], [], checkpoint=200, line=2)
    led = await reopen(ledger)
    state = await led.open(JOB)
    assert state.estimated_cost_usd == 0.2500015
    assert (await led.status()).estimated_cost_usd == 0.2500015
    await led.aclose()


async def test_a_complete_batch_spools_nothing_when_collected(ledger: SQLiteLedger) -> None:
    local = (await ledger.claim([entry(1), entry(2)], [], checkpoint=200, line=2)).local_id
    await ledger.record_created(local, "msgbatch_1")
    done = await ledger.commit_results(
        local, output=SinkPosition(200, 2), written=2, done=True, written_ids=["req-1", "req-2"]
    )
    assert done == 0
    assert await ledger.take_spool(10) == []


async def test_commit_results_spools_retries_with_the_next_attempt(ledger: SQLiteLedger) -> None:
    local = (
        await ledger.claim([entry(n) for n in range(1, 4)], [], checkpoint=300, line=3)
    ).local_id
    await ledger.record_created(local, "msgbatch_1")
    await ledger.record_ended(local)
    await ledger.commit_results(
        local,
        output=SinkPosition(100, 1),
        written=1,
        spool=["req-2", "req-3"],
        written_ids=["req-1"],
    )
    # the same commit again (a re-download after a crash) changes nothing
    await ledger.commit_results(local, output=SinkPosition(100, 1), written=0, spool=["req-2"])
    assert await ledger.attempts(["req-1", "req-2", "req-3"]) == {
        "req-1": 1,
        "req-2": 2,
        "req-3": 2,
    }
    spool = await ledger.take_spool(1)
    assert [(s.custom_id, s.attempt) for s in spool] == [("req-2", 2)]
    rest = await ledger.take_spool(10, after=spool[0].seq)
    assert [s.custom_id for s in rest] == ["req-3"]
    assert await ledger.unwritten(local, ["req-1", "req-2", "req-3"]) == []
    retry = await ledger.claim([entry(2, attempt=2)], [], checkpoint=0, line=0)
    assert retry.duplicates == []
    assert [s.custom_id for s in await ledger.take_spool(10)] == ["req-3"]
    assert (await ledger.status()).spooled == 1


async def test_unwritten_lists_what_a_redownload_still_owes(ledger: SQLiteLedger) -> None:
    local = (
        await ledger.claim([entry(n) for n in range(1, 5)], [], checkpoint=400, line=4)
    ).local_id
    await ledger.record_created(local, "msgbatch_1")
    await ledger.record_ended(local)
    await ledger.commit_results(
        local, output=SinkPosition(200, 2), written=2, written_ids=["req-1", "req-3"]
    )
    ids = ["req-1", "req-2", "req-3", "req-4"]
    assert sorted(await ledger.unwritten(local, ids)) == ["req-2", "req-4"]


async def test_unwritten_follows_commits_made_between_calls(ledger: SQLiteLedger) -> None:
    # a re-download asks once per network chunk while it commits what it writes: each
    # answer must count the commits made since the last one, of this batch only
    first = await ledger.claim([entry(n) for n in range(1, 5)], [], checkpoint=0, line=4)
    second = await ledger.claim([entry(n) for n in range(5, 9)], [], checkpoint=0, line=8)
    for n, local in enumerate((first.local_id, second.local_id), start=1):
        await ledger.record_created(local, f"msgbatch_{n}")
        await ledger.record_ended(local)
    a, b = first.local_id, second.local_id
    ids_a = ["req-1", "req-2", "req-3", "req-4"]
    ids_b = ["req-5", "req-6", "req-7", "req-8"]
    await ledger.commit_results(a, output=SinkPosition(100, 1), written=1, written_ids=["req-1"])
    assert await ledger.unwritten(a, ids_a) == ["req-2", "req-3", "req-4"]
    await ledger.commit_results(a, output=SinkPosition(200, 2), written=1, written_ids=["req-3"])
    assert await ledger.unwritten(a, ids_a) == ["req-2", "req-4"]
    await ledger.commit_results(b, output=SinkPosition(300, 3), written=1, written_ids=["req-6"])
    assert await ledger.unwritten(b, ids_b) == ["req-5", "req-7", "req-8"]
    await ledger.commit_results(a, output=SinkPosition(400, 4), written=1, written_ids=["req-4"])
    assert await ledger.unwritten(a, ids_a) == ["req-2"]
    assert await ledger.unwritten(b, ids_b) == ["req-5", "req-7", "req-8"]


async def test_written_ids_survive_reopen_and_are_dropped_once_collected(
    state_path: Path,
) -> None:
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    local = (await led.claim([entry(n) for n in range(1, 6)], [], checkpoint=500, line=5)).local_id
    await led.record_created(local, "msgbatch_1")
    await led.record_ended(local)
    for n, cid in enumerate(["req-4", "req-1"], start=1):  # two commits, in any order
        await led.commit_results(
            local, output=SinkPosition(100 * n, n), written=1, written_ids=[cid]
        )
    await led.commit_results(local, output=SinkPosition(200, 2), written=0, spool=["req-5"])
    led = await reopen(led)
    state = await led.open(JOB)
    assert [b.results_written for b in state.batches] == [2]
    ids = ["req-1", "req-2", "req-3", "req-4", "req-5", "req-9"]
    assert await led.unwritten(local, ids) == ["req-2", "req-3"]  # in the order asked
    await led.commit_results(
        local, output=SinkPosition(400, 4), written=2, done=True, written_ids=["req-2", "req-3"]
    )
    assert await led.unwritten(local, ids) == []  # a collected batch owes nothing
    await led.aclose()
    with sqlite3.connect(state_path) as conn:
        assert conn.execute("SELECT count(*) FROM written").fetchone() == (0,)
    assert (await read_status(state_path)).written == 4


async def test_rejects_after_pages_in_order(ledger: SQLiteLedger) -> None:
    await ledger.record_rejects([reject(n, f"r{n}") for n in range(1, 8)], checkpoint=700, line=7)
    page1 = await ledger.rejects_after(0, 3)
    page2 = await ledger.rejects_after(3, 3)
    page3 = await ledger.rejects_after(6, 3)
    assert [r.error.message for r in page1 + page2 + page3] == [f"r{n}" for n in range(1, 8)]
    assert await ledger.rejects_after(7, 3) == []
    await ledger.commit_rejects(SinkPosition(70, 7))
    led = await reopen(ledger)
    state = await led.open(JOB)
    assert state.rejects == SinkPosition(70, 7)
    assert (state.source_offset, state.source_line) == (700, 7)
    await led.aclose()


async def test_checkpoint_never_moves_back(ledger: SQLiteLedger) -> None:
    await ledger.record_rejects([], checkpoint=500, line=5)
    await ledger.claim([entry(1, attempt=2, iterable=True)], [], checkpoint=-1, line=0)
    status = await ledger.status()
    assert (status.read, status.source_offset) == (5, 500)


async def test_known_batch_ids(ledger: SQLiteLedger) -> None:
    local = (await ledger.claim([entry(1)], [], checkpoint=100, line=1)).local_id
    await ledger.record_created(local, "msgbatch_a")
    assert await ledger.known_batch_ids(["msgbatch_a", "msgbatch_b"]) == {"msgbatch_a"}


async def test_mark_finished_is_reported_on_open(ledger: SQLiteLedger) -> None:
    await ledger.mark_finished()
    assert (await ledger.status()).finished
    led = await reopen(ledger)
    assert (await led.open(JOB)).finished
    await led.aclose()


async def test_wrong_transitions_are_usage_errors(ledger: SQLiteLedger) -> None:
    local = (await ledger.claim([entry(1)], [], checkpoint=100, line=1)).local_id
    with pytest.raises(UsageError, match="no batch"):
        await ledger.record_created(local + 100, "x")
    with pytest.raises(UsageError, match="intent"):
        await ledger.record_ended(local)
    await ledger.record_created(local, "msgbatch_1")
    with pytest.raises(UsageError, match="created"):
        await ledger.release(local)  # a created batch is never re-sent


async def test_closed_ledger_refuses_calls(state_path: Path) -> None:
    led = SQLiteLedger(state_path)
    with pytest.raises(UsageError, match="not open"):
        await led.status()
    await led.open(JOB)
    with pytest.raises(UsageError, match="already open"):
        await led.open(JOB)
    await led.aclose()
    await led.aclose()  # idempotent
    with pytest.raises(UsageError, match="not open"):
        await led.claim([entry(1)], [], checkpoint=100, line=1)


def wal_pages(state_path: Path) -> int:
    """Pages written to the state's WAL so far (each a 24-byte header and a page)."""
    size = state_path.with_name(state_path.name + "-wal").stat().st_size
    return (size - 32) // (24 + 4096)


async def test_a_collected_batch_is_dropped_without_writing_its_pages_again(
    ledger: SQLiteLedger, state_path: Path
) -> None:
    # a batch of 2,000 requests with 60-character ids: a record of about 40 pages,
    # and its written ids about 30 more. Collecting it drops both; the pages they
    # held are freed, not rewritten as zeros (as SQLite builds that default to
    # secure_delete do: each collected batch cost its pages twice)
    ids = [f"{n:060d}" for n in range(1, 2001)]
    local = (
        await ledger.claim(
            [entry(n, cid=cid) for n, cid in enumerate(ids, 1)], [], checkpoint=200_000, line=2000
        )
    ).local_id
    await ledger.record_sending(local, body_bytes=1, sent_at=1.0)
    await ledger.record_created(local, "msgbatch_1")
    await ledger.record_ended(local)
    await ledger.record_output_start(local, 0)
    before = wal_pages(state_path)
    await ledger.commit_results(
        local, output=SinkPosition(1, 1000), written=1000, written_ids=ids[:1000]
    )
    written = wal_pages(state_path) - before
    assert written >= 15  # the written ids are on the pages
    before = wal_pages(state_path)
    await ledger.commit_results(
        local, output=SinkPosition(2, 2000), written=1000, written_ids=ids[1000:], done=True
    )
    dropped = wal_pages(state_path) - before
    status = await ledger.status()
    assert (status.written, status.batches) == (2000, [])
    # the second half's ids (as many pages as the first), and a few pages of
    # counters, the batch's row and the free list: not the record's 40 again
    assert dropped <= written + 12
