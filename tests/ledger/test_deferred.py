"""Ids in any order: the requests whose custom_id the filter cannot rule out are
deferred, then resolved many at once (the first line wins), through reopens."""

from __future__ import annotations

import random
import sqlite3
from array import array
from collections import Counter
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from pipeline import Client, Pipeline
from pipeline.ledger import SQLiteLedger, read_status
from pipeline.ledger import _sqlite_ids as ids
from pipeline.testing import EmulatorConfig, serve_emulator
from tests._helpers import FAST, read_results
from tests._helpers import entry as request

from ._helpers import JOB, entry

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.stages import Entry

#: random 32-hex ids (they do not go up: the ledger hashes them)
RNG = random.Random(29)
IDS = [f"{RNG.getrandbits(128):032x}" for _ in range(2_400)]


@pytest.fixture(autouse=True)
def coarse_filter(monkeypatch: pytest.MonkeyPatch) -> None:
    """A filter that cannot rule much out (each key sets one of 2 bits of its word,
    1024 words), so that new ids are deferred too, and hashing after 100 late ids."""
    monkeypatch.setattr(ids, "_masks", lambda: array("Q", [1 << (m & 1) for m in range(1 << 16)]))
    monkeypatch.setattr(ids, "_LATE_FLOOR", 100)


async def held(ledger: SQLiteLedger, first: int, last: int) -> list[int]:
    """Claim ``IDS[first:last]`` on lines ``first + 1`` ..., 400 a claim, then settle
    the deferred ones; the lines deferred (all new ids: each is released)."""
    deferred = []
    for start in range(first, last, 400):
        batch = [entry(n + 1, cid=IDS[n]) for n in range(start, min(start + 400, last))]
        claim = await ledger.claim(batch, [], checkpoint=batch[-1].end, line=batch[-1].line)
        assert claim.duplicates == []
        deferred += [batch[i].line for i in claim.deferred]
    settled = await ledger.resolve_deferred()
    assert (settled.settled, settled.released, settled.rejected) == (
        len(deferred),
        len(deferred),
        0,
    )
    return deferred


async def claim(ledger: SQLiteLedger, batch: list[Entry]) -> tuple[list[int], list[int]]:
    result = await ledger.claim(batch, [], checkpoint=0, line=0)
    return result.duplicates, result.deferred


async def test_copies_are_rejected_naming_the_first_line_and_new_ids_are_sent(
    ledger: SQLiteLedger,
) -> None:
    released = await held(ledger, 0, 2_000)
    assert released  # the coarse filter made some new ids wait
    # the ones released wait in the spool, with their lines, to be sent
    spooled = await ledger.take_spool(5_000)
    assert sorted(i.line for i in spooled) == released
    assert all(i.offset == (i.line - 1) * 100 and i.length == 100 for i in spooled)
    # claimed back (as the retry feeder does): sent, neither deferred nor rejected
    back = [entry(i.line, cid=i.custom_id) for i in spooled]
    result = await ledger.claim(back, [], checkpoint=0, line=0)
    assert (result.duplicates, result.deferred, result.local_id > 0) == ([], [], True)
    assert await ledger.take_spool(5_000) == []
    # copies of held ids (lines 3 and 1500, and a released one), new ids, and a copy
    # of a new id within the claim: the copies and what the filter cannot rule out
    # wait (a copy of a waiting one waits too: the first line wins when resolved)
    batch = [
        entry(2_001, cid=IDS[2]),
        entry(2_002, cid=IDS[2_000]),
        entry(2_003, cid=IDS[1_499]),
        *(entry(2_004 + k, cid=IDS[2_001 + k]) for k in range(40)),
        entry(2_044, cid=IDS[released[0] - 1]),
        entry(2_045, cid=IDS[2_000]),
    ]
    duplicates, deferred = await claim(ledger, batch)
    if 1 in deferred:  # the id of line 2002 waits: its copy on line 2045 too
        assert (duplicates, {0, 2, 43, 44} <= set(deferred)) == ([], True)
    else:  # new at once: its copy is a duplicate at once
        assert (duplicates, {0, 2, 43} <= set(deferred)) == ([44], True)
    # a copy, in a later claim, of an id held or waiting
    later = await claim(ledger, [entry(2_046, cid=IDS[2_000])])
    deferred += later[1]
    settled = await ledger.resolve_deferred()
    assert (settled.settled, settled.rejected) == (len(deferred), 5 - len(duplicates))
    assert settled.released == len(deferred) - settled.rejected
    messages = sorted(r.error.message for r in await ledger.rejects_after(0, 10))
    assert messages == sorted(
        [
            f"custom_id '{IDS[2]}' already used on line 3",
            f"custom_id '{IDS[1_499]}' already used on line 1500",
            f"custom_id '{IDS[released[0] - 1]}' already used on line {released[0]}",
            f"custom_id '{IDS[2_000]}' already used on line 2002",
            f"custom_id '{IDS[2_000]}' already used on line 2002",
        ]
    )


async def test_deferred_requests_outlive_a_reopen_and_stay_first(state_path: Path) -> None:
    # Deferred requests are the ledger's until settled: a reopen finds them (and the
    # filter it builds again still flags them), a copy of one on a later line is a
    # duplicate naming it, the same line read again is skipped, and once resolved the
    # new ones are released to be sent.
    ledger = SQLiteLedger(state_path)
    await ledger.open(JOB)
    await held(ledger, 0, 1_000)
    batch = [entry(1_001 + k, cid=IDS[1_000 + k]) for k in range(200)]
    _, deferred = await claim(ledger, batch)
    assert deferred
    await ledger.aclose()
    ledger = SQLiteLedger(state_path)
    state = await ledger.open(JOB)
    assert state.deferred == len(deferred)
    assert (await ledger.status()).spooled == len(deferred) + state.spooled
    first = batch[deferred[0]]
    again = [entry(first.line, cid=first.custom_id), entry(5_000, cid=first.custom_id)]
    result = await ledger.claim(again, [], checkpoint=0, line=0)
    assert (result.skipped, result.duplicates, result.deferred) == ([0], [], [1])
    settled = await ledger.resolve_deferred()
    assert (settled.settled, settled.released, settled.rejected) == (
        len(deferred) + 1,
        len(deferred),
        1,
    )
    assert (await ledger.rejects_after(0, 10))[0].error.message == (
        f"custom_id '{first.custom_id}' already used on line {first.line}"
    )
    await ledger.aclose()


async def test_a_line_read_again_after_it_was_sent_is_skipped_when_resolved(
    ledger: SQLiteLedger,
) -> None:
    # a line claimed and sent, read again (a restart before the checkpoint moved):
    # the filter flags it, it waits, and resolving finds it held from that very line
    await held(ledger, 0, 1_200)
    _, deferred = await claim(ledger, [entry(7, cid=IDS[6]), entry(8, cid=IDS[7])])
    assert deferred == [0, 1]
    settled = await ledger.resolve_deferred()
    assert (settled.settled, settled.released, settled.rejected) == (2, 0, 0)
    assert await ledger.rejects_after(0, 10) == []


async def test_a_claim_resolves_the_deferred_once_the_keys_held_grew(
    ledger: SQLiteLedger, monkeypatch: pytest.MonkeyPatch
) -> None:
    # each resolution reads every key held: it comes when the keys held grew by a
    # share since the last one (here by half, from 0), not at every claim
    monkeypatch.setattr(ids, "RESOLVE_FLOOR", 0)
    settled = 0
    claims = 0
    for start in range(0, 2_400, 400):
        batch = [entry(n + 1, cid=IDS[n]) for n in range(start, start + 400)]
        result = await ledger.claim(batch, [], checkpoint=batch[-1].end, line=batch[-1].line)
        settled += result.settled
        claims += result.settled > 0
        assert result.released == result.settled  # every id new
    assert settled > 0
    assert claims < 6


def write_requests(path: Path, cids: list[str]) -> None:
    """An input of one request per custom_id of ``cids``, in that order."""
    path.write_bytes(
        b"".join(msgspec.json.encode(request(cid, f"q {n}")) + b"\n" for n, cid in enumerate(cids))
    )


def job(tmp_path: Path, client: Client, max_in_flight: int) -> Pipeline:
    """The job of ``tmp_path``'s input, 100 requests a batch."""
    return Pipeline(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        client=client,
        state=tmp_path / "s.db",
        rejects=tmp_path / "rejects.jsonl",
        config=msgspec.structs.replace(FAST, max_batch_requests=100, max_in_flight=max_in_flight),
    )


def rejects_of(tmp_path: Path) -> dict[int, str]:
    """The rejects file's messages, by line."""
    lines = (tmp_path / "rejects.jsonl").read_bytes().splitlines()
    return {r["line"]: r["error"]["message"] for r in map(msgspec.json.decode, lines)}


async def test_a_job_of_random_ids_with_copies_sends_each_id_once_and_rejects_the_copies(
    tmp_path: Path,
) -> None:
    # The whole job, against the emulator: with a filter that rules almost nothing
    # out, most requests are deferred, resolved and sent later from the spool. Every
    # id is sent and written once; each copy is rejected naming its first line.
    rng = random.Random(31)
    distinct = [f"{rng.getrandbits(128):032x}" for _ in range(1_500)]
    cids: list[str] = []
    first: dict[str, int] = {}
    copies: dict[int, str] = {}
    for i, cid in enumerate(distinct):
        cids.append(cid)
        first[cid] = len(cids)
        if i % 10 == 9:  # a copy of an earlier id, on a later line
            cids.append(distinct[rng.randrange(i)])
            copies[len(cids)] = cids[-1]
    write_requests(tmp_path / "in.jsonl", cids)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            with anyio.fail_after(60):
                stats = await job(tmp_path, client, 1_000).run()
        sent = emu.submissions()
    assert stats.finished
    assert (stats.written, stats.rejected) == (1_500, len(copies))
    assert sent == dict.fromkeys(distinct, 1)
    assert Counter(r.custom_id for r in read_results(tmp_path / "out.jsonl")) == sent
    assert rejects_of(tmp_path) == {
        line: f"custom_id {cid!r} already used on line {first[cid]}" for line, cid in copies.items()
    }


async def test_a_job_stopped_with_requests_deferred_settles_them_when_run_again(
    tmp_path: Path,
) -> None:
    # Stopped while requests wait deferred (the state file keeps them), the job run
    # again settles them: each id sent and written once, each copy rejected once.
    rng = random.Random(37)
    distinct = [f"{rng.getrandbits(128):032x}" for _ in range(1_200)]
    cids = [*distinct, *(distinct[rng.randrange(1_200)] for _ in range(60))]
    write_requests(tmp_path / "in.jsonl", cids)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            first = job(tmp_path, client, 200)
            async with anyio.create_task_group() as tg:
                tg.start_soon(first.run)
                with anyio.fail_after(30):
                    while (
                        not (tmp_path / "s.db").exists()
                        or (await read_status(tmp_path / "s.db")).read < 500
                    ):
                        await anyio.sleep(0.01)
                first.stop()
            held = await read_status(tmp_path / "s.db")
            assert not held.finished
            with sqlite3.connect(tmp_path / "s.db") as db:
                waiting = db.execute("SELECT count(*) FROM deferred").fetchone()[0]
            db.close()
            assert waiting > 0  # requests wait deferred in the state file
            assert first.statistics().deferred == waiting  # and the run counted them
            with anyio.fail_after(60):
                stats = await job(tmp_path, client, 200).run()
        sent = emu.submissions()
    assert stats.finished
    assert sent == dict.fromkeys(distinct, 1)
    assert Counter(r.custom_id for r in read_results(tmp_path / "out.jsonl")) == sent
    assert sorted(rejects_of(tmp_path)) == list(range(1_201, 1_261))
