"""``python -m pipeline status``: progress for a person and as JSON, while a worker runs."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

import anyio
import msgspec

from pipeline.cli import main
from pipeline.ledger import SinkPosition, SQLiteLedger
from tests.ledger._helpers import JOB, entry, reject

if TYPE_CHECKING:
    from pathlib import Path

    import pytest


async def _job_in_progress(path: Path) -> SQLiteLedger:
    """5 lines read (1 reject), a batch collected, one in flight, one spooled."""
    led = SQLiteLedger(path)
    await led.open(JOB)
    done = (await led.claim([entry(2), entry(3)], [reject(1)], checkpoint=300, line=3)).local_id
    await led.record_sending(done, body_bytes=10, sent_at=time.time() - 3700)
    await led.record_created(done, "msgbatch_done")
    await led.record_ended(done)
    await led.commit_results(
        done, output=SinkPosition(10, 1), written=1, spool=["req-3"], done=True
    )
    priced = [entry(4), entry(5)]
    for e in priced:
        e.cost_usd = 0.125  # the spend guard's estimate of each
    flying = (await led.claim(priced, [], checkpoint=500, line=5)).local_id
    await led.record_sending(flying, body_bytes=10, sent_at=time.time() - 125)
    await led.record_created(flying, "msgbatch_flying")
    return led


def test_status_for_a_person_while_the_worker_runs(
    state_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def check() -> None:
        led = await _job_in_progress(state_path)
        try:
            assert await anyio.to_thread.run_sync(main, ["status", "--state", str(state_path)]) == 0
        finally:
            await led.aclose()

    anyio.run(check)
    out = capsys.readouterr().out
    assert "running (a worker holds the state)" in out
    assert "read       5 lines" in out
    assert "rejected   1 (0 in the rejects file)" in out
    assert "submitted  4" in out
    assert "ended      2" in out
    assert "written    1 (10 bytes durable in the output)" in out
    assert "spooled    1" in out
    assert "in flight  1 batches, 2 requests" in out
    assert "estimated  $0.2500 for the requests sent so far" in out
    assert "msgbatch_flying" in out
    assert "sent 2m0" in out  # 125 s ago
    assert "msgbatch_done" not in out


def test_status_as_json(state_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def setup() -> None:
        await (await _job_in_progress(state_path)).aclose()

    anyio.run(setup)
    assert main(["status", "--state", str(state_path), "--json"]) == 0
    data = msgspec.json.decode(capsys.readouterr().out)
    assert {k: data[k] for k in ("read", "rejected", "submitted", "ended", "written")} == {
        "read": 5,
        "rejected": 1,
        "submitted": 4,
        "ended": 2,
        "written": 1,
    }
    assert data["spooled"] == 1
    assert data["finished"] is False
    assert data["worker_running"] is False
    assert data["job"]["input_path"] == "in.jsonl"
    [flying] = data["batches"]
    assert flying["batch_id"] == "msgbatch_flying"
    assert 120 < flying["age_seconds"] < 600


def test_status_of_a_missing_or_corrupt_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--state", str(tmp_path / "nope")]) == 2
    assert "does not exist" in capsys.readouterr().err
    bad = tmp_path / "bad.state"
    bad.write_bytes(b"garbage" * 1000)
    assert main(["status", "--state", str(bad), "--json"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("pipeline status: state file")
    assert "not a usable pipeline state file" in err
    assert bad.read_bytes() == b"garbage" * 1000


def test_status_cli_can_settle_an_ambiguous_create(state_path: Path) -> None:
    async def setup() -> tuple[int, int]:
        led = SQLiteLedger(state_path)
        await led.open(JOB)
        ids = []
        for first in (1, 4):
            es = [entry(i) for i in range(first, first + 3)]
            local = (await led.claim(es, [], checkpoint=first * 100, line=first)).local_id
            await led.record_sending(local, body_bytes=1, sent_at=time.time())
            ids.append(local)
        await led.aclose()
        return ids[0], ids[1]

    a, b = anyio.run(setup)
    assert main(["status", "--state", str(state_path), "--adopt", f"{a}=msgbatch_x"]) == 0
    # one batch cannot be two intents: a clear refusal, not a database error
    assert main(["status", "--state", str(state_path), "--adopt", f"{b}=msgbatch_x"]) == 2
    assert main(["status", "--state", str(state_path), "--release", str(b)]) == 0
    assert main(["status", "--state", str(state_path), "--adopt", "nonsense"]) == 2

    async def check() -> None:
        led = SQLiteLedger(state_path)
        state = await led.open(JOB)
        await led.aclose()
        assert [(r.local_id, r.batch_id) for r in state.batches] == [(a, "msgbatch_x")]
        assert state.pending_intents == []
        assert state.spooled == 3

    anyio.run(check)


def test_status_cli_can_abandon_a_batch_the_service_lost(
    state_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async def setup() -> int:
        led = SQLiteLedger(state_path)
        await led.open(JOB)
        local = (
            await led.claim([entry(i) for i in range(1, 4)], [], checkpoint=300, line=3)
        ).local_id
        await led.record_created(local, "msgbatch_gone")
        await led.record_ended(local)
        await led.commit_results(
            local, output=SinkPosition(100, 1), written=1, written_ids=["req-1"]
        )
        await led.aclose()
        return local

    local = anyio.run(setup)
    assert main(["status", "--state", str(state_path), "--abandon", str(local)]) == 0
    assert "2 requests will be sent again" in capsys.readouterr().err
    # twice is a mistake, said so
    assert main(["status", "--state", str(state_path), "--abandon", str(local)]) == 2

    async def check() -> None:
        led = SQLiteLedger(state_path)
        state = await led.open(JOB)
        spooled = [s.custom_id for s in await led.take_spool(10)]
        await led.aclose()
        assert state.batches == []
        assert sorted(spooled) == ["req-2", "req-3"]  # req-1 is in the output already

    anyio.run(check)


def test_status_of_a_finished_job(state_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    async def setup() -> None:
        led = await _job_in_progress(state_path)
        await led.mark_finished()
        await led.aclose()

    anyio.run(setup)
    assert main(["status", "--state", str(state_path)]) == 0
    assert "finished: every request has its result in the output" in capsys.readouterr().out
