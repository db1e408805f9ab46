"""Helpers for end-to-end resume tests: an input file, a worker subprocess
(``python -m pipeline run``), and reading what it left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import anyio
import httpx
import msgspec

from pipeline._errors import LedgerError
from pipeline.ledger import JobStatus, SQLiteLedger, read_status

if TYPE_CHECKING:
    import random
    from pathlib import Path


class _Line(msgspec.Struct):
    custom_id: str


class _RejectLine(msgspec.Struct):
    line: int
    custom_id: str | None


def write_input(
    path: Path, n: int, *, prefix: str = "req", bad_every: int = 0
) -> tuple[list[str], list[int]]:
    """``n`` valid lines (custom_ids ``{prefix}-00000``...); with ``bad_every``, a
    broken line every ``bad_every`` and a duplicate custom_id at the end. Returns
    the valid custom_ids and the line numbers that must be rejected."""
    ids = [f"{prefix}-{i:05d}" for i in range(n)]
    bad: list[int] = []
    line = 0
    params: dict[str, object] = {}
    with path.open("wb") as f:
        for i, cid in enumerate(ids):
            if bad_every and i % bad_every == bad_every // 2:
                line += 1
                bad.append(line)
                f.write(b'{"custom_id": "broken-%d", "params": \n' % i)
            params = {
                "model": "claude-3-haiku-20240307",
                "max_tokens": 16,
                "messages": [{"role": "user", "content": f"say {cid}"}],
            }
            line += 1
            f.write(msgspec.json.encode({"custom_id": cid, "params": params}) + b"\n")
        if bad_every:
            f.write(msgspec.json.encode({"custom_id": ids[0], "params": params}) + b"\n")
            bad.append(line + 1)
    return ids, bad


def start_worker(
    url: str,
    tmp: Path,
    *extra: str,
    batch: int = 100,
    in_flight: int = 300,
    attempts: int = 3,
    api_key: str = "resume-test-key",
) -> subprocess.Popen[bytes]:
    """``pipeline run`` on ``tmp/in.jsonl`` into ``tmp/out.jsonl``, state ``tmp/job.state``;
    each ``api_key`` is a workspace of its own at the emulator."""
    command = [
        sys.executable, "-m", "pipeline", "run", str(tmp / "in.jsonl"),
        "--output", str(tmp / "out.jsonl"), "--state", str(tmp / "job.state"),
        "--rejects", str(tmp / "rejects.jsonl"),
        "--base-url", url, "--max-batch-requests", str(batch), "--max-in-flight", str(in_flight),
        "--linger-seconds", "0.05", "--poll-interval", "0.05", "--dry-run", "off",
        "--max-attempts", str(attempts), *extra,
    ]  # fmt: skip
    env = {
        **os.environ,
        "ANTHROPIC_API_KEY": api_key,
        "PIPELINE_RECONCILE_SETTLE_SECONDS": "1",
    }
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=tmp
    )


async def status_of(path: Path) -> JobStatus | None:
    """The job's status, or None while the state file is not there yet."""
    try:
        return await read_status(path)
    except LedgerError:
        return None


def size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def output_ids(path: Path) -> list[str]:
    return [
        msgspec.json.decode(line, type=_Line).custom_id for line in path.read_bytes().splitlines()
    ]


def reject_lines(path: Path) -> list[int]:
    lines = path.read_bytes().splitlines() if path.exists() else []
    return [msgspec.json.decode(line, type=_RejectLine).line for line in lines]


async def submissions(url: str) -> dict[str, int]:
    """How many times the emulator received each custom_id in a create."""
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{url}/_emulator/submissions")
        answer.raise_for_status()
        counts: dict[str, int] = answer.json()
        return counts


def start_definition(
    url: str, definition: Path, *, api_key: str = "resume-test-key"
) -> subprocess.Popen[bytes]:
    """``pipeline worker DEFINITION`` against the emulator at ``url`` (the definition
    takes the service from the environment, as the SDK does)."""
    command = [sys.executable, "-m", "pipeline", "worker", str(definition), "--quiet"]
    env = {
        **os.environ,
        "ANTHROPIC_API_KEY": api_key,
        "ANTHROPIC_BASE_URL": url,
        "PIPELINE_RECONCILE_SETTLE_SECONDS": "1",
    }
    return subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=definition.parent
    )


class KillTrigger:
    """When to kill a worker, chosen by a seeded RNG: after a random time, after the
    n-th commit of the state file, or once the output grew by a random size; never
    letting one run write more than its share of what is left (``total`` lines in
    the end), so the job cannot finish before the last kill."""

    def __init__(
        self, rng: random.Random, out: Path, state: Path, *, total: int, kills_left: int
    ) -> None:
        self.out, self.wal = out, state.with_name(state.name + "-wal")
        data = out.read_bytes() if out.exists() else b""
        lines = data.count(b"\n")
        per_line = len(data) / lines if lines else 200
        self.quota = 0.7 * per_line * (total - lines) / (kills_left + 1)
        self.kind = rng.choice(["time", "time", "state", "output"])
        self.seconds = rng.uniform(0.2, 0.9)
        self.commits = rng.randint(1, 20)
        self.grow = rng.randint(1, 40_000)
        self.base_output = size(out)
        self.base_wal = (0, 0)
        self.changes = 0

    def fired(self, started: float) -> bool:
        elapsed = time.monotonic() - started
        if elapsed > 4.0:
            return True
        grown = size(self.out) - self.base_output
        if grown >= self.quota:
            return True
        if self.kind == "time":
            return elapsed >= self.seconds
        if self.kind == "output":
            return grown >= self.grow
        stamp = (size(self.wal), self.wal.stat().st_mtime_ns if self.wal.exists() else 0)
        if stamp != self.base_wal:
            self.base_wal, self.changes = stamp, self.changes + 1
        return self.changes >= self.commits


async def run_until_killed(worker: subprocess.Popen[bytes], trigger: KillTrigger) -> bool:
    """Let ``worker`` run until ``trigger`` fires, then SIGKILL it; whether it had
    finished by itself first (then it must have exited 0)."""
    started = time.monotonic()
    while worker.poll() is None and not trigger.fired(started):
        await anyio.sleep(0.005)
    finished = worker.poll() is not None
    worker.send_signal(signal.SIGKILL)
    _, err = worker.communicate()
    assert not finished or worker.returncode == 0, err.decode()
    return finished


async def recorded_attempts(path: Path, ids: list[str]) -> dict[str, int]:
    """The attempt the job's ledger records for each of ``ids`` it holds (opened
    after the worker has exited)."""
    ledger = SQLiteLedger(path)
    await ledger.open_existing()
    try:
        return await ledger.attempts(ids)
    finally:
        await ledger.aclose()
