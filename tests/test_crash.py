"""Crash anywhere, lose nothing, pay once.

A worker (``python -m pipeline run``) runs a job of a few thousand requests in
small batches against the emulator in its own process, and is killed with SIGKILL
at 20+ moments chosen by a seeded RNG from what the test watches (the state file,
the output's size, the clock), then restarted each time. At the end the output
holds every custom_id exactly once and the emulator's own log shows every request
submitted exactly as many times as the ledger's attempt count for it (no create
paid twice, none lost).
"""

from __future__ import annotations

import os
import random
import signal
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from pipeline.testing import start_emulator_process

from .ledger.jobs import (
    output_ids,
    recorded_attempts,
    reject_lines,
    size,
    start_worker,
    status_of,
    submissions,
    write_input,
)

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.ledger import JobStatus

pytestmark = pytest.mark.slow

REQUESTS = 4000
BATCH = 100
MAX_ATTEMPTS = 3
KILLS = 22
BAD_EVERY = 250
SEED = int(os.environ.get("CRASH_SEED", "20241124"))


class Trigger:
    """When to kill: chosen by the seeded RNG, checked in a bounded polling loop."""

    def __init__(self, rng: random.Random, tmp: Path, kills_left: int) -> None:
        self.tmp = tmp
        # Never let one run write more than its share of what is left, so that the
        # job cannot finish before the last kill.
        out = tmp / "out.jsonl"
        data = out.read_bytes() if out.exists() else b""
        lines = data.count(b"\n")
        per_line = len(data) / lines if lines else 500
        self.quota = 0.7 * per_line * (REQUESTS - lines) / (kills_left + 1)
        self.kind = rng.choice(["time", "time", "state", "output", "sending", "created", "ended"])
        self.seconds = rng.uniform(0.3, 1.0)
        self.commits = rng.randint(1, 25)
        self.grow = rng.randint(1, 150_000)
        self.base_output = size(tmp / "out.jsonl")
        self.base_wal = (0, 0)
        self.changes = 0

    async def fired(self, started: float) -> bool:
        elapsed = time.monotonic() - started
        if elapsed > 4.0:  # the target phase did not come: kill anyway
            return True
        if size(self.tmp / "out.jsonl") >= self.base_output + self.quota:
            return True
        if self.kind == "time":
            return elapsed >= self.seconds
        if self.kind == "output":
            return size(self.tmp / "out.jsonl") >= self.base_output + self.grow
        if self.kind == "state":  # after the n-th ledger commit of this run
            wal = self.tmp / "job.state-wal"
            stamp = (size(wal), wal.stat().st_mtime_ns if wal.exists() else 0)
            if stamp != self.base_wal:
                self.base_wal, self.changes = stamp, self.changes + 1
            return self.changes >= self.commits
        status = await status_of(self.tmp / "job.state")
        return status is not None and any(b.state == self.kind for b in status.batches)


def phases(status: JobStatus | None, wrote: bool) -> set[str]:
    """What the worker was doing when it was killed, from the frozen state."""
    if status is None:
        return {"starting"}
    found = {"reading"} if status.read < REQUESTS + REQUESTS // BAD_EVERY + 1 else set()
    states = {b.state for b in status.batches}
    if states & {"intent", "sending"}:
        found.add("submitting")
    if "created" in states:
        found.add("polling")
    if "ended" in states:
        found.add("downloading")
    if wrote:
        found.add("writing")
    return found


async def test_sigkill_at_random_moments_loses_nothing_and_pays_once(tmp_path: Path) -> None:
    ids, bad = write_input(tmp_path / "in.jsonl", REQUESTS, bad_every=BAD_EVERY)
    rng = random.Random(SEED)
    emulator = ["--batch-seconds", "0.4", "--request-error-rate", "0.03", "--cut-rate", "0.2"]
    with start_emulator_process(*emulator, "--seed", str(SEED)) as url:
        seen: dict[str, int] = {}
        kills = 0
        while kills < KILLS:
            trigger = Trigger(rng, tmp_path, KILLS - kills)
            worker = start_worker(
                url, tmp_path, batch=BATCH, in_flight=3 * BATCH, attempts=MAX_ATTEMPTS
            )
            started = time.monotonic()
            while worker.poll() is None and not await trigger.fired(started):
                await anyio.sleep(0.005)
            finished = worker.poll() is not None
            worker.send_signal(signal.SIGKILL)
            worker.communicate()
            if finished:  # before the trigger: the job is too short
                break
            kills += 1
            wrote = size(tmp_path / "out.jsonl") > trigger.base_output
            for phase in phases(await status_of(tmp_path / "job.state"), wrote):
                seen[phase] = seen.get(phase, 0) + 1
        # the last run goes to the end
        worker = start_worker(
            url, tmp_path, batch=BATCH, in_flight=3 * BATCH, attempts=MAX_ATTEMPTS
        )
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err.decode()
        submitted = await submissions(url)
    assert kills >= 20, f"the job finished after {kills} kills: make it longer"
    assert {"reading", "submitting", "polling", "downloading", "writing"} <= set(seen), seen

    written = output_ids(tmp_path / "out.jsonl")
    assert len(written) == len(set(written)), "an output line was duplicated"
    assert sorted(written) == ids, "an accepted request has no output line"

    assert sorted(reject_lines(tmp_path / "rejects.jsonl")) == bad, (
        "a reject line was lost or duplicated"
    )

    attempts = await recorded_attempts(tmp_path / "job.state", ids)
    assert set(submitted) == set(ids)
    overpaid = {c: (n, attempts[c]) for c, n in submitted.items() if n != attempts[c]}
    assert overpaid == {}, "submitted more (or fewer) times than the attempts recorded"
    assert max(submitted.values()) <= MAX_ATTEMPTS

    rerun = start_worker("http://127.0.0.1:9", tmp_path)  # never contacted
    _, err = rerun.communicate(timeout=30)
    assert rerun.returncode == 0
    assert b"already finished" in err
