"""``python -m pipeline run`` and signals: SIGTERM while batches are in flight stops
gracefully (exit 3: not finished, resumable; consistent state) and a re-run completes the job; a second
SIGTERM exits at once (128 + 15) and a re-run still completes it. Every custom_id
ends in the output exactly once and no request is ever submitted twice."""

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
import pytest

from pipeline._errors import LedgerError
from pipeline.ledger import read_status
from pipeline.testing import start_emulator_process

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from pipeline.ledger import JobStatus

MODEL = "claude-3-haiku-20240307"


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    # batches stay in flight for a while, so a signal finds some at the service
    with start_emulator_process("--batch-seconds", "1.0") as url:
        yield url


def write_input(path: Path, n: int, prefix: str) -> list[str]:
    ids = [f"{prefix}-{i:04d}" for i in range(n)]
    with path.open("wb") as f:
        for cid in ids:
            params = {
                "model": MODEL,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": cid}],
            }
            f.write(msgspec.json.encode({"custom_id": cid, "params": params}) + b"\n")
    return ids


def start(url: str, tmp: Path, key: str) -> subprocess.Popen[bytes]:
    command = [
        sys.executable, "-m", "pipeline", "run", str(tmp / "in.jsonl"),
        "--output", str(tmp / "out.jsonl"), "--state", str(tmp / "job.state"),
        "--base-url", url, "--max-batch-requests", "50", "--max-in-flight", "200",
        "--linger-seconds", "0.02", "--poll-interval", "0.05", "--dry-run", "off",
    ]  # fmt: skip
    env = {**os.environ, "ANTHROPIC_API_KEY": key, "PIPELINE_RECONCILE_SETTLE_SECONDS": "1"}
    return subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


async def wait_until(
    tmp: Path, worker: subprocess.Popen[bytes], cond: Callable[[JobStatus], bool]
) -> JobStatus:
    """Poll the state file (bounded) until ``cond`` holds."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker ended before the moment to test"
        try:
            status = await read_status(tmp / "job.state")
        except LedgerError:
            status = None  # not created yet
        if status is not None and cond(status):
            return status
        await anyio.sleep(0.005)
    raise AssertionError("timed out waiting for batches in flight")


def in_flight(status: JobStatus) -> bool:
    return any(b.state == "created" for b in status.batches)


def delivered(pid: int, signum: int) -> bool:
    """Whether ``signum`` is no longer pending for ``pid`` (its handler ran)."""
    with open(f"/proc/{pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f if ":" in line)
    pending = int(fields["ShdPnd"], 16) | int(fields["SigPnd"], 16)
    return not pending & (1 << (signum - 1))


def finish(url: str, tmp: Path, key: str) -> str:
    worker = start(url, tmp, key)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err.decode()
    return err.decode()


async def assert_exactly_once(url: str, tmp: Path, ids: list[str], prefix: str) -> None:
    written = [
        msgspec.json.decode(x)["custom_id"] for x in (tmp / "out.jsonl").read_bytes().splitlines()
    ]
    assert len(written) == len(set(written)), "an output line was duplicated"
    assert sorted(written) == ids
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{url}/_emulator/submissions")
    counts = {c: n for c, n in answer.json().items() if c.startswith(prefix + "-")}
    assert counts == dict.fromkeys(ids, 1), "a request was submitted twice (or never)"


async def test_sigterm_stops_gracefully_and_a_rerun_completes(
    emulator: str, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 400, "term")
    worker = start(emulator, tmp_path, "term")
    await wait_until(tmp_path, worker, in_flight)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=10)
    assert worker.returncode == 3, err.decode()  # stopped, not finished: resumable
    status = await read_status(tmp_path / "job.state")
    assert not status.finished
    assert not status.worker_running
    assert in_flight(status)  # left running at the service, collected next time
    assert [b for b in status.batches if b.state in ("intent", "sending")] == []
    assert (tmp_path / "out.jsonl").stat().st_size == status.output.offset  # committed
    err_text = finish(emulator, tmp_path, "term")
    assert "resuming" in err_text
    await assert_exactly_once(emulator, tmp_path, ids, "term")
    assert (await read_status(tmp_path / "job.state")).finished


async def test_a_second_sigterm_exits_at_once_and_a_rerun_completes(
    emulator: str, tmp_path: Path
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 400, "twice")
    worker = start(emulator, tmp_path, "twice")
    await wait_until(tmp_path, worker, in_flight)
    worker.send_signal(signal.SIGTERM)
    for _ in range(10_000):  # bounded: the first must be delivered, not merged
        if delivered(worker.pid, signal.SIGTERM):
            break
        await anyio.sleep(0)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=10)
    assert worker.returncode == 128 + signal.SIGTERM, err.decode()
    assert b"interrupted; re-run the same command to resume" in err
    status = await read_status(tmp_path / "job.state")
    assert not status.finished
    assert not status.worker_running
    finish(emulator, tmp_path, "twice")
    await assert_exactly_once(emulator, tmp_path, ids, "twice")
