"""``python -m pipeline worker``: signals, a definition that raises, a real worker
process that takes a file dropped into its watched directory and stops cleanly on
SIGTERM, and ``--low-memory`` / ``--no-low-memory`` on the pipeline a definition runs."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pipeline.cli.worker import run_worker
from tests._helpers import FakePipeline, StubbornPipeline

if TYPE_CHECKING:
    from pathlib import Path


QUIET = argparse.Namespace(quiet=True, log_format="text", progress="auto")


async def _handlers_installed() -> None:
    """Wait (bounded) until the worker's signal handlers replaced the defaults:
    sending a signal before that would kill the test process."""
    for _ in range(1000):
        if (
            signal.getsignal(signal.SIGTERM) not in (signal.SIG_DFL, None)
            and signal.getsignal(signal.SIGINT) is not signal.default_int_handler
        ):
            return
        await anyio.sleep(0.001)
    raise AssertionError("the worker never installed its signal handlers")


async def test_first_signal_stops_gracefully_and_exits_0() -> None:
    fake = FakePipeline()
    codes: list[int] = []

    async def worker() -> None:
        codes.append(await run_worker(fake, args=QUIET))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await fake.started.wait()
        await _handlers_installed()
        os.kill(os.getpid(), signal.SIGTERM)
    assert codes == [0]
    assert fake.stop_calls == 1
    assert fake.finished


async def test_second_signal_exits_at_once() -> None:
    fake = StubbornPipeline()
    codes: list[int] = []

    async def worker() -> None:
        codes.append(await run_worker(fake, args=QUIET))

    async with anyio.create_task_group() as tg:
        tg.start_soon(worker)
        await fake.started.wait()
        await _handlers_installed()
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(1000):
            if fake.stop_calls:
                break
            await anyio.sleep(0.001)
        os.kill(os.getpid(), signal.SIGINT)
    assert codes == [128 + signal.SIGINT]
    assert fake.stop_calls == 1
    assert not fake.finished


def test_a_definition_that_raises_exits_2_with_its_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.py"
    bad.write_text("raise ValueError('boom')\n")
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "worker", str(bad), "--progress", "off"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert "worker failed: the definition" in done.stderr
    assert "ValueError: boom" in done.stderr
    assert "anyio" not in done.stderr  # no frames of the worker's own machinery


# -- a real worker process -------------------------------------------------------

DEFINITION = """
from pipeline import PipelineConfig
from pipeline import WatchPipeline

pipeline = WatchPipeline(
    {inbox!r},
    {output!r},
    poll_interval=0.05,
    config=PipelineConfig(linger_seconds=0.1, dry_run="off"),
)
"""


async def _poll(check: Any, what: str, seconds: float = 30.0) -> None:
    for _ in range(int(seconds / 0.02)):
        if check():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


async def test_worker_takes_a_dropped_file_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    inbox, output, log = tmp_path / "inbox", tmp_path / "results.jsonl", tmp_path / "worker.log"
    inbox.mkdir()
    definition = tmp_path / "definition.py"
    definition.write_text(DEFINITION.format(inbox=str(inbox), output=str(output)))
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    command = [sys.executable, "-m", "pipeline", "worker", str(definition), "--log-format", "json"]
    with log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=env)
    try:
        await _poll(lambda: b"local emulator" in log.read_bytes(), "the worker to start")
        lines = [
            b'{"custom_id":"w-%d","params":{"model":"claude-3-haiku-20240307","max_tokens":16,'
            b'"messages":[{"role":"user","content":"hi %d"}]}}' % (i, i)
            for i in range(5)
        ]
        (inbox / "drop.jsonl.tmp").write_bytes(b"\n".join(lines) + b"\n")
        (inbox / "drop.jsonl.tmp").rename(inbox / "drop.jsonl")
        await _poll(
            lambda: output.exists() and len(output.read_bytes().splitlines()) == 5,
            "the results of the dropped file",
        )
        assert (inbox / "drop.jsonl.done").exists()
        proc.send_signal(signal.SIGTERM)
        await _poll(lambda: proc.poll() is not None, "the worker to exit")
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == 0
    ids = sorted(
        msgspec.json.decode(line)["custom_id"] for line in output.read_bytes().splitlines()
    )
    assert ids == [f"w-{i}" for i in range(5)]
    records = [msgspec.json.decode(line) for line in log.read_bytes().splitlines()]
    messages = [r["message"] for r in records]
    assert any(m.startswith("SIGTERM: stopping") for m in messages)
    summary = next(r for r in records if r["message"].startswith("job stopped"))
    assert summary["outcomes"]["succeeded"] == 5
    assert summary["output"] == str(output)
    assert any(r["logger"] == "pipeline.progress" and r["written"] == 5 for r in records)


# -- --low-memory / --no-low-memory on a definition's pipeline ---------------------

MEMORY_DEFINITION = """
from pathlib import Path

from pipeline import Pipeline, PipelineConfig


class Noting(Pipeline):
    async def run(self):
        Path({note!r}).write_text(repr(self.config.low_memory))
        return await super().run()


pipeline = Noting(
    {source!r},
    {output!r},
    config=PipelineConfig(max_batch_requests=10, linger_seconds=0.01, dry_run="off", {extra}),
)
"""


def _worker_on(tmp_path: Path, extra: str, *flags: str) -> tuple[int, str, str]:
    """Run a worker process on a 25-line job whose definition sets ``extra``: its exit
    code, the ``low_memory`` its pipeline ran with, and its stderr."""
    tmp_path.mkdir()
    source, output, note = tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "note"
    lines = [
        b'{"custom_id":"m-%d","params":{"model":"claude-3-haiku-20240307","max_tokens":16,'
        b'"messages":[{"role":"user","content":"hi %d"}]}}' % (i, i)
        for i in range(25)
    ]
    source.write_bytes(b"\n".join(lines) + b"\n")
    definition = tmp_path / "definition.py"
    definition.write_text(
        MEMORY_DEFINITION.format(
            note=str(note), source=str(source), output=str(output), extra=extra
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "worker", str(definition), "--progress", "off", *flags],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    if done.returncode == 0:
        ids = sorted(
            msgspec.json.decode(line)["custom_id"] for line in output.read_bytes().splitlines()
        )
        assert ids == sorted(f"m-{i}" for i in range(25))  # the job ran to its end
    return done.returncode, note.read_text() if note.exists() else "", done.stderr


def test_the_worker_s_memory_flags_set_the_definition_s_low_memory(tmp_path: Path) -> None:
    assert _worker_on(tmp_path / "on", "", "--low-memory")[:2] == (0, "True")
    assert _worker_on(tmp_path / "off", "low_memory=True", "--no-low-memory")[:2] == (0, "False")
    assert _worker_on(tmp_path / "own", "low_memory=True")[:2] == (0, "True")  # no flag: its own
    code, note, stderr = _worker_on(tmp_path / "bad", "chunk_buffer=2", "--low-memory")
    assert (code, note) == (2, "")  # refused before the job starts
    assert "--low-memory: " in stderr
    assert "chunk_buffer" in stderr
