"""The ledger's runs of custom_ids through the ids-in-order mode and out of it, and a
state file of the previous schema (version 3) carried over to this one."""

from __future__ import annotations

import random
import shutil
import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from pipeline.ledger import SQLiteLedger, read_status
from pipeline.ledger import _sqlite_ids as ids

from ._helpers import JOB, entry, held_tables

if TYPE_CHECKING:
    import pytest

#: made by the release before schema 4 (commit 230ffd2) with ids in order: a batch
#: created at the service (lines 1-4), an intent (lines 5-8), a rejected line 9
SCHEMA3 = Path(__file__).parent / "data" / "schema3.state"


def tables(path: Path) -> dict[str, int]:
    """Ids held in each kind of table: runs of keys, rows of ids in order, late ids."""
    with sqlite3.connect(path) as db:
        counts = held_tables(db)
    db.close()
    return counts


async def test_ids_in_order_find_retries_and_late_lines_with_one_seek_each(
    state_path: Path,
) -> None:
    # ids that go up are kept as they are; ids coming again (duplicates) and new ids
    # below the greatest one (lines the dry run held back) are looked up in place,
    # before and after a reopen, and nothing is hashed
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    for k in range(20):
        batch = [entry(n, cid=f"r-{n:03d}") for n in range(5 * k + 1, 5 * k + 6)]
        claim = await ledger.claim(batch, [], checkpoint=(5 * k + 5) * 100, line=5 * k + 5)
        assert claim.duplicates == []
    assert await ledger.attempts(["r-001", "r-100", "r-101"]) == {"r-001": 1, "r-100": 1}
    late = [entry(100 + n, cid=f"r-{5 * n:03d}a") for n in range(1, 21)]
    claim = await ledger.claim(
        [*late, entry(121, cid="r-007"), entry(122, cid="r-093"), entry(123, cid="r-101")],
        [],
        checkpoint=12300,
        line=123,
    )
    assert claim.duplicates == [20, 21]
    assert await ledger.attempts(["r-001", "r-050a", "r-102"]) == {"r-001": 1, "r-050a": 1}
    await ledger.aclose()
    assert tables(state_path) == {"keys": 0, "in order": 102, "late": 19}
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    claim = await ledger.claim(
        [entry(124, cid="r-015a"), entry(125, cid="r-200"), entry(126, cid="r-100")],
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


async def test_ids_that_stop_going_up_are_hashed_once_and_all_still_found(
    state_path: Path,
) -> None:
    # 24,000 ids in order, then ids between them: once the late ones are more than
    # the mode allows, every id held is hashed into runs of keys, and each one is
    # still found with its first line, in the same claim, later and after a reopen
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    line = 0  # the last line claimed

    async def claim(cids: list[str]) -> list[int]:
        """The duplicates found at once, or (once the ids are hashed) deferred."""
        nonlocal line
        batch = [entry(line + i + 1, cid=cid) for i, cid in enumerate(cids)]
        line += len(cids)
        result = await ledger.claim(batch, [], checkpoint=line * 100, line=line)
        return result.duplicates + result.deferred

    for k in range(12):  # even numbers, going up: lines 1-24,000
        assert await claim([f"r-{n:06d}" for n in range(4000 * k, 4000 * (k + 1), 2)]) == []
    for k in range(10):  # odd numbers, each below the greatest id held: late
        assert await claim([f"r-{n:06d}" for n in range(4000 * k + 1, 4000 * (k + 1), 2)]) == []
    assert tables(state_path) == {"keys": 0, "in order": 24_000, "late": 20_000}
    # 2,000 more late ones (lines 44,001-46,000): more than the mode allows
    odd = [f"r-{n:06d}" for n in range(40_001, 44_000, 2)]
    assert await claim([*odd, "r-000002", "r-000003"]) == [2000, 2001]
    assert tables(state_path) == {"keys": 46_000, "in order": 0, "late": 0}
    assert await claim(["r-000004", "r-039999", "r-050000"]) == [0, 1]
    assert await ledger.attempts(["r-000004", "r-000005", "r-999999"]) == {
        "r-000004": 1,
        "r-000005": 1,
    }
    await ledger.aclose()
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    assert await claim(["r-043999", "r-000001", "r-050001", "r-050000"]) == [0, 1, 3]
    # the deferred ones (of both runs) are resolved together
    settled = await ledger.resolve_deferred()
    assert (settled.settled, settled.released, settled.rejected) == (5, 0, 5)
    rejects = await ledger.rejects_after(0, 10)
    assert [r.error.message for r in rejects] == [
        "custom_id 'r-000002' already used on line 2",
        "custom_id 'r-000003' already used on line 24002",
        "custom_id 'r-000004' already used on line 3",
        "custom_id 'r-039999' already used on line 44000",
        "custom_id 'r-043999' already used on line 46000",
        "custom_id 'r-000001' already used on line 24001",
        "custom_id 'r-050000' already used on line 46005",
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
    # the ids are hashed at the upgrade: a copy is deferred, and found in the runs
    # of schema 3 when resolved
    assert claim.deferred == [0]
    settled = await ledger.resolve_deferred()
    assert (settled.settled, settled.released, settled.rejected) == (1, 0, 1)
    await ledger.aclose()
    with sqlite3.connect(path) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    db.close()
    assert version == (5,)
    ledger = SQLiteLedger(path)
    await ledger.open(JOB)
    claim = await ledger.claim(
        [entry(13, cid="r-0035"), entry(14, cid="r-001")], [], checkpoint=0, line=0
    )
    assert claim.deferred == [0, 1]
    await ledger.resolve_deferred()
    rejects = await ledger.rejects_after(0, 10)
    assert [r.error.message for r in rejects][-3:] == [
        "custom_id 'r-003' already used on line 3",
        "custom_id 'r-0035' already used on line 12",
        "custom_id 'r-001' already used on line 1",
    ]
    await ledger.aclose()


async def test_a_reopened_ledger_holds_a_filter_no_larger_than_a_fresh_one(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The filter of keys lives in memory and is built again at every open. A job
    # whose input is guessed to hold 60,000 requests, stopped with 45,000 random ids
    # held, must not reopen with a filter sized for twice those (it was: a job
    # resumed near its end held a filter almost twice a fresh one's). Past the
    # guess, a reopen still makes room for as many again.
    monkeypatch.setattr(ids, "_MIN_KEYS", 1024)  # (a filter is made for 1M keys at the least)
    rng = random.Random(17)
    job = msgspec.structs.replace(JOB, input_fingerprint=f"{60_000 * 600}:sha256:0")
    cids = [f"{rng.getrandbits(128):032x}" for _ in range(70_000)]

    async def run(first: int, last: int) -> tuple[int, SQLiteLedger]:
        ledger = SQLiteLedger(state_path)
        await ledger.open(job)
        deferred = 0
        for start in range(first, last, 5_000):
            batch = [entry(n + 1, cid=cids[n]) for n in range(start, start + 5_000)]
            claim = await ledger.claim(batch, [], checkpoint=(start + 5_000) * 100, line=start)
            assert claim.duplicates == []
            deferred += len(claim.deferred)  # the filter's false positives, about 1%
        # resolved: each new (to the spool, to be sent), none a copy
        settled = await ledger.resolve_deferred()
        assert (settled.settled, settled.released, settled.rejected) == (deferred, deferred, 0)
        # (no public figure for it: the filter's bits are the ledger's own memory)
        index_filter = ledger._index.filter
        assert index_filter is not None
        return index_filter.nbytes, ledger

    fresh, ledger = await run(0, 45_000)
    await ledger.aclose()
    assert tables(state_path)["keys"] == 45_000  # the ids were hashed into runs
    reopened, ledger = await run(45_000, 45_000)
    assert reopened == fresh
    # ids held, on later lines: each a duplicate, found after the reopen
    again = [entry(100_001 + k, cid=cids[n]) for k, n in enumerate(range(0, 45_000, 999))]
    claim = await ledger.claim(again, [], checkpoint=0, line=0)
    assert claim.deferred == list(range(len(again)))
    settled = await ledger.resolve_deferred()
    assert (settled.settled, settled.released, settled.rejected) == (len(again), 0, len(again))
    await ledger.aclose()
    # 70,000 held, past the guess: the reopened filter is sized for twice those
    _, ledger = await run(45_000, 70_000)
    await ledger.aclose()
    grown, ledger = await run(70_000, 70_000)
    await ledger.aclose()
    assert grown >= 140_000 * 12 // 8


async def test_a_state_file_of_schema_4_is_upgraded_and_its_runs_still_hold_their_ids(
    state_path: Path,
) -> None:
    # Schema 4 kept hashed ids in sorted runs of keys. Upgraded, the runs stay, read as
    # they are: a copy of an id they hold waits, and is rejected naming its line.
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    await ledger.claim([entry(1, cid="a"), entry(2, cid="b")], [], checkpoint=200, line=2)
    await ledger.aclose()
    with sqlite3.connect(state_path) as db:  # the same job as schema 4 held it
        db.execute("DROP TABLE idclaims")
        db.execute("DROP TABLE deferred")
        db.execute("DELETE FROM idruns")
        db.execute("DELETE FROM meta WHERE key = 'ids_top'")
        run = db.execute("INSERT INTO runs(level, size) VALUES (0, 2)").lastrowid
        for line, cid in ((1, "a"), (2, "b")):
            h, c = ids.key_of(cid)
            db.execute("INSERT INTO ids0 VALUES (?, ?, ?)", (run, h, c << 32 | line))
        db.execute("UPDATE meta SET value = 4 WHERE key = 'schema_version'")
    db.close()
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    claim = await ledger.claim([entry(3, cid="b"), entry(4, cid="c")], [], checkpoint=0, line=0)
    assert (claim.duplicates, claim.deferred) == ([], [0])
    settled = await ledger.resolve_deferred()
    assert (settled.settled, settled.released, settled.rejected) == (1, 0, 1)
    assert [r.error.message for r in await ledger.rejects_after(0, 10)] == [
        "custom_id 'b' already used on line 2"
    ]
    await ledger.aclose()
    with sqlite3.connect(state_path) as db:
        version = db.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()
    db.close()
    assert version == (5,)
