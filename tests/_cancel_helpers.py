"""Helpers of the cancel tests (``tests/test_cancel.py``, ``tests/cli/test_cancel.py``):
an input file, the batches as the official SDK sees them, the output's lines, the
commands run as separate processes, and a bounded wait on a condition."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING

import anthropic
import anyio
import httpx
import msgspec

from pipeline import LedgerError
from pipeline.ledger import read_status

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from pipeline.ledger import JobStatus

MODEL = "claude-3-haiku-20240307"
#: the key the commands run with: shaped like a real one, so that any leak shows
SECRET_KEY = "sk-ant-api03-cancel-test-secret-0123456789"


class _Result(msgspec.Struct):
    type: str


class _Line(msgspec.Struct):
    custom_id: str
    result: _Result


def write_input(path: Path, n: int, *, prefix: str = "q") -> list[str]:
    """``n`` small valid requests, custom_ids ``{prefix}-000000``...; the ids."""
    ids = [f"{prefix}-{i:06d}" for i in range(n)]
    with path.open("wb") as f:
        f.write(
            b"".join(
                msgspec.json.encode(
                    {
                        "custom_id": cid,
                        "params": {
                            "model": MODEL,
                            "max_tokens": 8,
                            "messages": [{"role": "user", "content": cid}],
                        },
                    }
                )
                + b"\n"
                for cid in ids
            )
        )
    return ids


def output_outcomes(path: Path) -> dict[str, str]:
    """custom_id -> result type of each output line (asserting each id is there once)."""
    lines = [msgspec.json.decode(b, type=_Line) for b in path.read_bytes().splitlines()]
    outcomes = {line.custom_id: line.result.type for line in lines}
    assert len(outcomes) == len(lines), "a custom_id is in the output more than once"
    return outcomes


async def batch_statuses(url: str, key: str = SECRET_KEY) -> list[anthropic.types.MessageBatch]:
    """Every batch of the workspace, as the official SDK lists them."""
    async with anthropic.AsyncAnthropic(api_key=key, base_url=url, max_retries=0) as sdk:
        return [batch async for batch in sdk.messages.batches.list(limit=100)]


async def advance(url: str, seconds: float) -> None:
    """Move a ``--manual-clock`` emulator's time forward."""
    async with httpx.AsyncClient() as http:
        answer = await http.post(f"{url}/_emulator/advance", params={"seconds": seconds})
        answer.raise_for_status()


async def submissions(url: str) -> Counter[int]:
    """How many custom_ids the emulator received once, twice..."""
    async with httpx.AsyncClient() as http:
        answer = await http.get(f"{url}/_emulator/submissions")
        answer.raise_for_status()
        counts: dict[str, int] = answer.json()
    return Counter(counts.values())


async def wait_for(
    condition: Callable[[], Awaitable[bool]], *, timeout: float = 30.0, what: str = "condition"
) -> float:
    """Check ``condition`` until it holds (bounded); the seconds it took."""
    started = time.monotonic()
    while not await condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await anyio.sleep(0.01)
    return time.monotonic() - started


async def status(state: Path) -> JobStatus | None:
    """The job's status, None while there is no (complete) state file yet."""
    try:
        return await read_status(state)
    except LedgerError:
        return None


def command(*args: str, key: str = SECRET_KEY) -> subprocess.Popen[str]:
    """``python -m pipeline ARGS`` in its own process, with the API key in its
    environment; stdout and stderr captured as text."""
    env = {**os.environ, "ANTHROPIC_API_KEY": key, "PIPELINE_RECONCILE_SETTLE_SECONDS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def finish(proc: subprocess.Popen[str], timeout: float = 60.0) -> tuple[int, str]:
    """Wait for a command; its exit status and everything it printed."""
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out + err
