"""The ledger's runs of custom_ids through the ids-in-order mode and out of it, and a
state file of the previous schema (version 3) carried over to this one."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from pipeline.ledger import SQLiteLedger, read_status

from .conftest import JOB, entry

#: made by the release before schema 4 (commit 230ffd2) with ids in order: a batch
#: created at the service (lines 1-4), an intent (lines 5-8), a rejected line 9
SCHEMA3 = Path(__file__).parent / "data" / "schema3.state"


async def test_ids_that_stop_going_up_are_checked_against_every_id_held(
    state_path: Path,
) -> None:
    # 20 claims of ids in order, then one whose ids fall between them all (looking
    # each up in each run would cost more than the claim: the ledger leaves the mode
    # and takes every id held as a key); the first line of each id is kept through
    # the switch and a reopen
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    for k in range(20):
        batch = [entry(n, cid=f"r-{n:03d}") for n in range(5 * k + 1, 5 * k + 6)]
        claim = await ledger.claim(batch, [], checkpoint=(5 * k + 5) * 100, line=5 * k + 5)
        assert claim.duplicates == []
    assert await ledger.attempts(["r-001", "r-100", "r-101"]) == {"r-001": 1, "r-100": 1}
    between = [entry(100 + n, cid=f"r-{5 * n:03d}a") for n in range(1, 21)]
    claim = await ledger.claim(
        [*between, entry(121, cid="r-007"), entry(122, cid="r-093")], [], checkpoint=0, line=0
    )
    assert claim.duplicates == [20, 21]
    assert await ledger.attempts(["r-001", "r-050a", "r-101"]) == {"r-001": 1, "r-050a": 1}
    await ledger.aclose()
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    claim = await ledger.claim(
        [entry(123, cid="r-015a"), entry(124, cid="r-200"), entry(125, cid="r-100")],
        [],
        checkpoint=0,
        line=0,
    )
    assert claim.duplicates == [0, 2]
    rejects = await ledger.rejects_after(0, 10)
    assert [r.error.message for r in rejects] == [
        "custom_id 'r-007' already used on line 7",
        "custom_id 'r-093' already used on line 93",
        "custom_id 'r-015a' already used on line 103",
        "custom_id 'r-100' already used on line 100",
    ]
    await ledger.aclose()


async def test_a_state_file_of_schema_3_is_read_then_upgraded_with_its_job(
    tmp_path: Path,
) -> None:
    path = tmp_path / "job.state"
    shutil.copyfile(SCHEMA3, path)
    status = await read_status(path)  # read as it is, without the job's lock
    assert [(b.local_id, b.state, b.request_count) for b in status.batches] == [
        (1, "created", 4),
        (2, "intent", 4),
    ]
    ledger = SQLiteLedger(path)
    state = await ledger.open(JOB)
    assert [(i.local_id, i.state) for i in state.pending_intents] == [(2, "intent")]
    assert [b.batch_id for b in state.batches] == ["msgbatch_a"]
    # the intent's requests, recorded a row each by schema 3, are read back
    await ledger.release(2)
    spooled = await ledger.take_spool(10)
    assert [(i.custom_id, i.line, i.offset, i.length) for i in spooled] == [
        (f"r-{n:03d}", n, (n - 1) * 100, 100) for n in range(5, 9)
    ]
    # the ids it holds are still known, and new ones are taken, above and below
    claim = await ledger.claim(
        [entry(10, cid="r-003"), entry(11, cid="r-020"), entry(12, cid="r-0035")],
        [],
        checkpoint=1200,
        line=12,
    )
    assert claim.duplicates == [0]
    await ledger.aclose()
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    db.close()
    assert version == (4,)
    ledger = SQLiteLedger(path)
    await ledger.open(JOB)
    claim = await ledger.claim(
        [entry(13, cid="r-0035"), entry(14, cid="r-001")], [], checkpoint=0, line=0
    )
    assert claim.duplicates == [0, 1]
    await ledger.aclose()
