"""Ids in any order, under SIGKILL: the requests the filter cannot rule out wait in
the state file, are settled many at once and sent later, and none of that may lose a
result, write one twice, pay a request twice or let a copy through.

A worker (``python -m pipeline run``) runs a job of random 32-hex custom_ids, with
copies of some of them on later lines and broken lines, against the emulator in its
own process (which fails a few requests, so there are retries), and is killed at 16
moments chosen by a seeded RNG, then run to the end. Its filter is coarse (see
``coarse_filter/sitecustomize.py``), so a good share of new ids are deferred, and
are settled only once the input was read or nothing else is under way."""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec
import pytest

from pipeline.testing import start_emulator_process

from .jobs import (
    KillTrigger,
    output_ids,
    recorded_attempts,
    run_until_killed,
    size,
    start_worker,
    submissions,
)

if TYPE_CHECKING:
    import subprocess

pytestmark = pytest.mark.slow

REQUESTS = 3000
COPIES = 60
BROKEN = 12
KILLS = 16
MAX_ATTEMPTS = 3
SEED = int(os.environ.get("CRASH_SEED", "20261207"))
COARSE = Path(__file__).with_name("coarse_filter")


class _Reject(msgspec.Struct):
    line: int
    custom_id: str | None
    error: dict[str, str]


def write_job(path: Path, rng: random.Random) -> tuple[list[str], dict[int, str]]:
    """Random ids, each a line, with ``COPIES`` copies of earlier ids and ``BROKEN``
    broken lines among them. The distinct ids, and the reason each line to reject
    must give (by line: a copy names the first line of its id)."""
    ids = [f"{rng.getrandbits(128):032x}" for _ in range(REQUESTS)]
    first: dict[str, int] = {}
    rejected: dict[int, str] = {}
    copies = set(rng.sample(range(REQUESTS // 10, REQUESTS), COPIES))
    broken = set(rng.sample(range(REQUESTS), BROKEN))
    line = 0
    with path.open("wb") as f:
        for i, cid in enumerate(ids):
            if i in broken:
                line += 1
                f.write(b'{"custom_id": "broken-%d", "params": \n' % i)
                rejected[line] = "broken"
            line += 1
            first[cid] = line
            params = {
                "model": "claude-3-haiku-20240307",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"say {cid}"}],
            }
            f.write(msgspec.json.encode({"custom_id": cid, "params": params}) + b"\n")
            if i in copies:
                copy = ids[rng.randrange(i + 1)]
                line += 1
                f.write(msgspec.json.encode({"custom_id": copy, "params": params}) + b"\n")
                rejected[line] = f"custom_id {copy!r} already used on line {first[copy]}"
    return ids, rejected


async def test_random_ids_under_sigkill_give_each_result_once_and_each_copy_one_reject(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(SEED)
    ids, rejected = write_job(tmp_path / "in.jsonl", rng)
    path = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, (str(COARSE), path))))
    out, state = tmp_path / "out.jsonl", tmp_path / "job.state"
    emulator = ["--batch-seconds", "0.3", "--request-error-rate", "0.03"]
    with start_emulator_process(*emulator, "--seed", str(SEED)) as url:

        def start() -> subprocess.Popen[bytes]:
            return start_worker(url, tmp_path, batch=100, in_flight=300, attempts=MAX_ATTEMPTS)

        kills = deferred_seen = 0
        while kills < KILLS:
            trigger = KillTrigger(rng, out, state, total=REQUESTS, kills_left=KILLS - kills)
            if await run_until_killed(start(), trigger):
                break
            kills += 1
            deferred_seen += _deferred(state) > 0
        worker = start()
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err.decode()
        submitted = await submissions(url)
    assert kills == KILLS, f"the job finished after {kills} kills: make it longer"
    assert deferred_seen >= 3, "too few kills found requests deferred: make the filter coarser"
    assert size(out) > 0

    written = output_ids(out)
    assert len(written) == len(set(written)), "an output line was duplicated"
    assert sorted(written) == sorted(ids), "an accepted request has no output line"

    rejects = [
        msgspec.json.decode(line, type=_Reject)
        for line in (tmp_path / "rejects.jsonl").read_bytes().splitlines()
    ]
    assert sorted(r.line for r in rejects) == sorted(rejected), "a reject lost or written twice"
    for r in rejects:
        if rejected[r.line] != "broken":  # a copy: it names the first line of its id
            assert r.error["message"] == rejected[r.line], r

    attempts = await recorded_attempts(state, ids)
    assert set(submitted) == set(ids), "a copy (or a broken line) was sent"
    overpaid = {c: (n, attempts[c]) for c, n in submitted.items() if n != attempts[c]}
    assert overpaid == {}, "submitted more (or fewer) times than the attempts recorded"
    assert max(submitted.values()) <= MAX_ATTEMPTS


def _deferred(state: Path) -> int:
    """Requests deferred in the state file the killed worker left (0 before there)."""
    import sqlite3

    if not state.exists():
        return 0
    db = sqlite3.connect(f"file:{state}?mode=ro", uri=True)
    try:
        (count,) = db.execute("SELECT count(*) FROM deferred").fetchone()
    except sqlite3.OperationalError:  # the tables are not made yet
        return 0
    finally:
        db.close()
    return int(count)
