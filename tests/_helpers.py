"""Helpers shared by the tests (one module, as httpx's ``tests/common.py``):

- the runner's end-to-end tests (``Pipeline`` against the emulator on loopback): request
  entries, input files, result files and one job;
- the tests of metrics, traces, health and the job page: an input with some bad lines,
  a fast config, reading Prometheus text;
- the cancel tests: an input file, the batches as the official SDK sees them, the
  output's lines, the commands run as separate processes, a bounded wait;
- stand-ins for a ``Pipeline`` where a test needs only its life cycle (the worker's
  signal handling and definition loading, also from definitions run in a subprocess,
  so this module imports the SDK and prometheus-client only where they are used)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec

from pipeline import Client, LedgerError, Pipeline, PipelineConfig, PipelineStatistics
from pipeline.api import ResultLine
from pipeline.ledger import read_status

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    import anthropic

    from pipeline.ledger import JobStatus

MODEL = "claude-3-haiku-20240307"
FAST = PipelineConfig(
    max_batch_requests=10,
    max_in_flight=40,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",
)


def entry(cid: str, text: str = "hello") -> dict[str, Any]:
    return {
        "custom_id": cid,
        "params": {
            "model": MODEL,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": text}],
        },
    }


def write_input(path: Path, n: int, bad: dict[int, bytes] | None = None) -> list[str]:
    """``n`` valid lines, with ``bad`` lines inserted at the given 1-based line numbers."""
    lines = [msgspec.json.encode(entry(f"req-{i}", f"question {i}")) for i in range(n)]
    for line_no, data in sorted((bad or {}).items()):
        lines.insert(line_no - 1, data)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return [f"req-{i}" for i in range(n)]


def kind(line: ResultLine) -> str:
    """The result's type tag: succeeded, errored, canceled or expired."""
    tag = type(line.result).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def read_results(path: Path) -> list[ResultLine]:
    decoder = msgspec.json.Decoder(ResultLine)
    return [decoder.decode(line) for line in path.read_bytes().splitlines()]


async def run_job(
    tmp_path: Path, emu_url: str, config: PipelineConfig = FAST, **kwargs: Any
) -> tuple[Pipeline, Any]:
    async with Client(api_key="test-key", base_url=emu_url) as client:
        pipeline = Pipeline(
            kwargs.pop("source", tmp_path / "in.jsonl"),
            kwargs.pop("output", tmp_path / "out.jsonl"),
            config=config,
            client=client,
            **kwargs,
        )
        with anyio.fail_after(30):
            stats = await pipeline.run()
    return pipeline, stats


KEY = "sk-ant-api03-ops-test-key"
CONFIG = PipelineConfig(
    max_batch_requests=10,
    max_in_flight=1_000,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="count-tokens",
    dry_run_rate=1_000.0,
)
#: the bad lines write_mixed_input adds, by the reject type they get
BAD_LINES = {
    "invalid_json": [b"{not json", b'{"custom_id": "x-1", '],
    "invalid_custom_id": [
        msgspec.json.encode(
            {
                "custom_id": "has spaces",
                "params": {"model": MODEL, "max_tokens": 8, "messages": []},
            }
        )
    ],
}


async def quick(seconds: float) -> None:
    """The client's back-off, in fast steps (its schedule is the client's tests')."""
    await anyio.sleep(min(seconds, 0.001))


def write_mixed_input(path: Path, n: int, *, bad: bool = True) -> list[str]:
    """``n`` good requests (ids ``m-000``...), with the ``BAD_LINES`` among them."""
    ids = [f"m-{i:03d}" for i in range(n)]
    lines = [
        msgspec.json.encode(
            {
                "custom_id": cid,
                "params": {
                    "model": MODEL,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"tell me about {cid}"}],
                },
            }
        )
        for cid in ids
    ]
    if bad:
        for i, extra in enumerate(line for group in BAD_LINES.values() for line in group):
            lines.insert(3 + 7 * i, extra)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return ids


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text, parsed by prometheus-client's own parser: (sample name,
    sorted labels) -> value."""
    out = {}
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent)."""
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def total(
    parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    return sum(
        v
        for (n, ls), v in parsed.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


#: the key the commands run with: shaped like a real one, so that any leak shows
SECRET_KEY = "sk-ant-api03-cancel-test-secret-0123456789"


class _Result(msgspec.Struct):
    type: str


class _Line(msgspec.Struct):
    custom_id: str
    result: _Result


def write_requests(path: Path, n: int, *, prefix: str = "q") -> list[str]:
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
    import anthropic

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


class FakePipeline:
    """Runs until stopped, like a pipeline on a source that never ends."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.stopped = anyio.Event()
        self.stop_calls = 0
        self.finished = False

    async def run(self) -> None:
        self.started.set()
        await self.stopped.wait()
        self.finished = True

    def statistics(self) -> PipelineStatistics:
        return PipelineStatistics(read=3, written=3, finished=self.finished)

    def stop(self, reason: str = "") -> None:
        self.stop_calls += 1
        self.stopped.set()


class StubbornPipeline(FakePipeline):
    """Does not end when asked to stop (a batch in hand takes long)."""

    def stop(self, reason: str = "") -> None:
        self.stop_calls += 1
