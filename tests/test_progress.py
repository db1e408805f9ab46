"""Progress: live display on a terminal, plain log lines otherwise, nothing when off.

Most drive the reporter with fake statistics and an injected sleep; the last
ones run a real job on the embedded emulator in a subprocess, under a real
pseudo-terminal (live display + summary) and on a pipe (plain lines).
"""

from __future__ import annotations

import io
import logging
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import pytest
from rich.console import Console

import pipeline
from pipeline._progress import (
    ProgressReporter,
    eta_seconds,
    format_progress_line,
    progress,
    resolve_mode,
)
from pipeline._stats import PipelineStatistics

if TYPE_CHECKING:
    from collections.abc import Iterator


class Job:
    """A fake job whose statistics move on each time the reporter sleeps."""

    def __init__(self, *, total: int | None = 100, step: int = 10) -> None:
        self.total = total
        self.step = step
        self.written = 0
        self.calls = 0
        self.sleeps: list[float] = []
        self.done = anyio.Event()

    def stats(self) -> PipelineStatistics:
        self.calls += 1
        return PipelineStatistics(
            read=100,
            rejected=0,
            submitted=100,
            in_flight=100 - self.written,
            batches_in_flight=1 if self.written < 100 else 0,
            ended=self.written,
            written=self.written,
            elapsed_seconds=2.0 + self.written / 10,
            total=self.total,
            estimated_cost_usd=0.5,
            actual_cost_usd=self.written / 200,
        )

    def sleeper(self, ticks: int) -> object:
        async def sleep(seconds: float) -> None:
            self.sleeps.append(seconds)
            self.written = min(100, self.written + self.step)
            if len(self.sleeps) >= ticks:
                self.done.set()
                await anyio.sleep_forever()
            await anyio.lowlevel.checkpoint()

        return sleep


class ListHandler(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


@pytest.fixture
def progress_log() -> Iterator[ListHandler]:
    handler = ListHandler()
    log = logging.getLogger("pipeline.progress")
    log.addHandler(handler)
    old_level = log.level
    log.setLevel(logging.INFO)
    yield handler
    log.removeHandler(handler)
    log.setLevel(old_level)


def test_eta_from_average_rate_only_when_it_can_be_known() -> None:
    # total: the requests to write (rejects are not among them)
    stats = PipelineStatistics(total=900, rejected=100, written=300, elapsed_seconds=60.0)
    assert eta_seconds(stats) == pytest.approx(120.0)  # 600 left at 5/s
    assert eta_seconds(PipelineStatistics(total=None, written=5, elapsed_seconds=1)) is None
    assert eta_seconds(PipelineStatistics(total=10, written=0, elapsed_seconds=9)) is None
    assert eta_seconds(PipelineStatistics(total=10, written=10, elapsed_seconds=9)) == 0.0


def test_progress_line_has_every_count_time_and_cost() -> None:
    stats = PipelineStatistics(
        read=1200,
        rejected=2,
        submitted=1198,
        in_flight=700,
        ended=498,
        written=498,
        batches_in_flight=2,
        total=1198,
        elapsed_seconds=30,
        estimated_cost_usd=1.5,
        actual_cost_usd=0.25,
    )
    line = format_progress_line(stats)
    for part in (
        "498/1,198 written",
        "read 1,200",
        "rejected 2",
        "submitted 1,198",
        "in flight 700 in 2 batches",
        "ended 498",
        "elapsed 30.0 s",
        "ETA 42.2 s",
        "cost estimated $1.50 · actual $0.2500",
    ):
        assert part in line


async def test_plain_mode_logs_periodic_lines_with_fields(progress_log: ListHandler) -> None:
    job = Job()
    async with progress(job.stats, mode="plain", interval=7.0, sleep=job.sleeper(ticks=3)):
        await job.done.wait()
    assert job.sleeps == [7.0, 7.0, 7.0]
    records = progress_log.records
    # one line per tick (each one changed) plus the final line on exit
    assert len(records) == 4
    assert [r.written for r in records] == [0, 10, 20, 30]  # type: ignore[attr-defined]
    assert records[-1].getMessage().startswith("progress: 30/100 written")
    assert records[-1].eta_seconds == pytest.approx(11.7)  # type: ignore[attr-defined]
    assert records[-1].in_flight == 70  # type: ignore[attr-defined]


async def test_plain_mode_does_not_repeat_an_idle_job_every_tick(
    progress_log: ListHandler,
) -> None:
    job = Job(step=0)
    async with progress(job.stats, mode="plain", interval=1.0, sleep=job.sleeper(ticks=10)):
        await job.done.wait()
    # first line, one heartbeat after 6 idle intervals, and the final line
    assert len(progress_log.records) == 3


async def test_live_mode_draws_and_leaves_the_final_state() -> None:
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=160, color_system=None)
    job = Job(step=50)
    async with progress(job.stats, mode="live", console=console, sleep=job.sleeper(ticks=2)):
        await job.done.wait()
    text = out.getvalue()
    assert "\x1b[" in text  # cursor movement: redrawn in place
    assert "0/100 written" in text
    assert "100/100 written" in text
    assert "in flight 0 in 0 batches" in text
    assert "cost estimated $0.5000 · actual $0.5000" in text


async def test_off_mode_shows_nothing(progress_log: ListHandler) -> None:
    job = Job()
    reporter = progress(job.stats, mode="off", sleep=job.sleeper(ticks=1))
    async with reporter:
        await anyio.lowlevel.checkpoint()
    assert job.calls == 0
    assert progress_log.records == []


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_auto_mode_follows_the_stream() -> None:
    assert resolve_mode("auto", io.StringIO()) == "plain"
    assert resolve_mode("auto", _Tty()) == "live"
    assert resolve_mode("off", _Tty()) == "off"
    with pytest.raises(ValueError, match="progress mode"):
        resolve_mode("loud", None)  # type: ignore[arg-type]
    reporter = ProgressReporter(Job().stats, mode="auto", stream=io.StringIO())
    assert (reporter.mode, reporter.interval) == ("plain", 10.0)


# -- run_with_progress: what the commands do around a job, as keyword arguments -----


class _FinishedJob:
    """Runs at once to its end; the summary names its output."""

    output_path = "results.jsonl"
    rejects_path = None

    async def run(self) -> None:
        pass

    def statistics(self) -> PipelineStatistics:
        return PipelineStatistics(read=3, submitted=3, written=3, finished=True)


async def test_run_with_progress_takes_the_commands_options_as_keywords() -> None:
    shown = io.StringIO()
    stats = await pipeline.run_with_progress(_FinishedJob(), progress="plain", stream=shown)
    assert stats.written == 3
    assert "results.jsonl" in shown.getvalue()  # the summary, naming the output
    quiet = io.StringIO()
    await pipeline.run_with_progress(_FinishedJob(), quiet=True, stream=quiet)
    assert quiet.getvalue() == ""


async def test_run_with_progress_logs_the_summary_as_json(
    caplog: pytest.LogCaptureFixture,
) -> None:
    shown = io.StringIO()
    with caplog.at_level(logging.INFO, logger="pipeline"):
        await pipeline.run_with_progress(
            _FinishedJob(), progress="off", log_format="json", stream=shown
        )
        await pipeline.run_with_progress(_FinishedJob(), log_format="json", stream=shown)
    assert shown.getvalue() == ""  # no text summary: one log record instead
    [record] = [r for r in caplog.records if r.getMessage().startswith("job finished")]
    assert record.getMessage().startswith("job finished: 3 written, 0 rejected")
    assert record.output == "results.jsonl"


# -- end to end: a real job on the embedded emulator, in a pty and in a pipe ------

JOB_SCRIPT = """
import sys
import anyio
from pipeline import Pipeline, configure_logging, run_with_progress

quiet = sys.argv[3] == "quiet"
configure_logging(level="WARNING" if quiet else "INFO")
pipeline = Pipeline(sys.argv[1], sys.argv[2])
anyio.run(lambda: run_with_progress(pipeline, quiet=quiet, interval=0.05 if quiet else None))
"""

REQUESTS = Path(__file__).resolve().parent.parent / "examples" / "requests.jsonl"


def _job_command(tmp_path: Path, mode: str) -> list[str]:
    script = tmp_path / "job.py"
    script.write_text(JOB_SCRIPT)
    return [sys.executable, str(script), str(REQUESTS), str(tmp_path / "out.jsonl"), mode]


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("ANTHROPIC_API_KEY", "NO_COLOR")}
    return {**env, "COLUMNS": "160", "LINES": "40", "TERM": "xterm-256color"}


def _read_pty(master: int, proc: subprocess.Popen[bytes], deadline: float) -> bytes:
    out = b""
    while time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # the child closed the pty
                break
            if not chunk:
                break
            out += chunk
        elif proc.poll() is not None:
            break
    return out


def test_live_progress_and_summary_in_a_real_terminal(tmp_path: Path) -> None:
    master, slave = pty.openpty()
    proc = subprocess.Popen(
        _job_command(tmp_path, "live"), stdin=slave, stdout=slave, stderr=slave, env=_env()
    )
    os.close(slave)
    try:
        text = _read_pty(master, proc, time.monotonic() + 60).decode(errors="replace")
        assert proc.wait(timeout=30) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "\x1b[" in text  # drawn with terminal control codes, in place
    assert "written" in text
    assert "in flight" in text
    assert "cost estimated" in text
    assert "Job finished in" in text  # the summary, after the display
    assert "succeeded 50" in text
    assert "rejected 3" in text
    assert "out.jsonl" in text
    assert "progress:" not in text  # no plain lines on a terminal


def test_plain_lines_when_not_a_terminal_and_silence_when_quiet(tmp_path: Path) -> None:
    plain = subprocess.run(
        _job_command(tmp_path, "plain"), capture_output=True, env=_env(), timeout=60, check=True
    )
    err = plain.stderr.decode()
    assert "\x1b[" not in err
    lines = [line for line in err.splitlines() if "pipeline.progress: progress:" in line]
    assert lines  # at least the first and the final line
    assert "50/53 written" in lines[-1] or "written 50" in lines[-1]
    assert "Job finished in" in err
    assert "succeeded 50" in err
    assert "running on the local emulator" in err

    (tmp_path / "out.jsonl").unlink()
    for leftover in tmp_path.glob("out*"):
        if leftover.is_file():
            leftover.unlink()
        else:
            shutil.rmtree(leftover)
    quiet = subprocess.run(
        _job_command(tmp_path, "quiet"), capture_output=True, env=_env(), timeout=60, check=True
    )
    assert quiet.stderr == b""
    assert quiet.stdout == b""
    assert len((tmp_path / "out.jsonl").read_bytes().splitlines()) == 50
