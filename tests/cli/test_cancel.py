"""``python -m pipeline cancel --state S`` against an emulator in its own process
(``--manual-clock``: its 60 s batches stay in progress until the test moves time):
with no worker running, on a running worker (which notices, completes the cancel
and exits 4), after a SIGKILL in the middle of a cancel, and the budget's cancel
action; the API key never appears in what the commands print nor in the state."""

from __future__ import annotations

import signal
from collections import Counter
from typing import TYPE_CHECKING

import pytest

from pipeline.testing import start_emulator_process
from tests._helpers import (
    SECRET_KEY,
    advance,
    batch_statuses,
    command,
    finish,
    output_outcomes,
    status,
    submissions,
    wait_for,
    write_requests,
)

if TYPE_CHECKING:
    import subprocess
    from collections.abc import Iterator
    from pathlib import Path

REQUESTS = 600
BATCH = 100


@pytest.fixture
def emulator() -> Iterator[str]:
    # a cancel takes 30 s of emulator time to end a batch: a cancel can be cut short
    with start_emulator_process(
        "--manual-clock", "--batch-seconds", "60", "--cancel-seconds", "30"
    ) as url:
        yield url


def _run(tmp: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    return command(
        "run", str(tmp / "in.jsonl"), "--output", str(tmp / "out.jsonl"),
        "--state", str(tmp / "job.state"), "--base-url", url,
        "--max-batch-requests", str(BATCH), "--linger-seconds", "0.02",
        "--poll-interval", "0.05", "--dry-run", "off", "--progress", "off", *extra,
    )  # fmt: skip


def _cancel(tmp: Path, url: str) -> subprocess.Popen[str]:
    return command("cancel", "--state", str(tmp / "job.state"), "--base-url", url)


async def _all_submitted(tmp: Path) -> bool:
    st = await status(tmp / "job.state")
    return st is not None and st.submitted == REQUESTS


async def _job_in_flight(tmp: Path, url: str, *extra: str) -> subprocess.Popen[str]:
    """A worker running the job with every batch created (none processed yet)."""
    write_requests(tmp / "in.jsonl", REQUESTS)
    worker = _run(tmp, url, *extra)
    await wait_for(lambda: _all_submitted(tmp), what="every batch created")
    await advance(url, 6)  # a tenth of each batch is processed, the rest not yet
    return worker


def _assert_no_key(tmp: Path, *printed: str) -> None:
    for text in printed:
        assert SECRET_KEY not in text
    for path in tmp.iterdir():
        if path.is_file():
            assert SECRET_KEY.encode() not in path.read_bytes(), path


async def _assert_canceled(tmp: Path, url: str) -> None:
    """What a completed cancel leaves: a tenth written, the rest held as canceled."""
    assert Counter(output_outcomes(tmp / "out.jsonl").values()) == {"succeeded": REQUESTS // 10}
    st = await status(tmp / "job.state")
    assert st is not None
    assert (st.cancel, st.canceled, st.batches) == ("canceled", REQUESTS // 10 * 9, [])
    for batch in await batch_statuses(url):
        assert batch.processing_status == "ended"
        assert batch.request_counts.canceled == BATCH // 10 * 9


async def test_cancel_with_no_worker_running_then_rerun_sends_nothing(
    tmp_path: Path, emulator: str
) -> None:
    worker = await _job_in_flight(tmp_path, emulator)
    worker.send_signal(signal.SIGTERM)  # a graceful stop leaves the batches running
    assert finish(worker)[0] == 3
    assert all(b.processing_status == "in_progress" for b in await batch_statuses(emulator))
    cancel = _cancel(tmp_path, emulator)
    # the batches are canceling at once (the cancel then waits for them to end)
    await wait_for(lambda: _every_batch(emulator, "canceling"), what="batches canceling")
    await advance(emulator, 31)
    code, printed = finish(cancel)
    assert code == 0, printed
    assert "job canceled: 540 request(s) canceled, 60 result(s) written" in printed
    await _assert_canceled(tmp_path, emulator)
    # a re-run says so (exit 4) and sends nothing
    code, rerun = finish(_run(tmp_path, emulator))
    assert code == 4, rerun
    assert "--resume-canceled" in rerun
    assert await submissions(emulator) == {1: REQUESTS}
    _assert_no_key(tmp_path, printed, rerun)


async def test_cancel_a_running_worker_from_another_process(tmp_path: Path, emulator: str) -> None:
    worker = await _job_in_flight(tmp_path, emulator, "--progress", "plain")
    cancel = _cancel(tmp_path, emulator)  # not refused: the worker holds the job's lock
    await wait_for(lambda: _every_batch(emulator, "canceling"), what="batches canceling")
    await advance(emulator, 31)
    worker_code, worker_printed = finish(worker)
    code, printed = finish(cancel)
    assert worker_code == 4, worker_printed  # the worker noticed, completed it, exited 4
    assert "job canceled (pipeline cancel): 540 request(s) canceled" in worker_printed
    assert "succeeded 60 · errored 0 · canceled 540" in worker_printed  # its summary
    assert code == 0, printed
    assert "canceled by its worker" in printed
    await _assert_canceled(tmp_path, emulator)
    _assert_no_key(tmp_path, printed, worker_printed)


@pytest.mark.parametrize("then", ["cancel", "run"])
async def test_sigkill_in_the_middle_of_a_cancel_is_completed_later(
    tmp_path: Path, emulator: str, then: str
) -> None:
    worker = await _job_in_flight(tmp_path, emulator)
    worker.send_signal(signal.SIGTERM)
    assert finish(worker)[0] == 3
    cancel = _cancel(tmp_path, emulator)
    await wait_for(lambda: _every_batch(emulator, "canceling"), what="batches canceling")
    cancel.kill()  # the batches are canceling, nothing is collected yet
    finish(cancel)
    st = await status(tmp_path / "job.state")
    assert st is not None
    assert (st.cancel, len(st.batches)) == ("requested", REQUESTS // BATCH)
    await advance(emulator, 31)
    # a second cancel, or a re-run of the job, completes it (nothing sent again)
    again = _cancel(tmp_path, emulator) if then == "cancel" else _run(tmp_path, emulator)
    code, printed = finish(again)
    assert code == (0 if then == "cancel" else 4), printed
    await _assert_canceled(tmp_path, emulator)
    assert await submissions(emulator) == {1: REQUESTS}


async def test_budget_action_cancel_on_the_command_line(tmp_path: Path, emulator: str) -> None:
    # several MiB: the first run cannot read it all ahead of the in-flight cap
    write_requests(tmp_path / "in.jsonl", 60_000)
    # two batches at the service (the in-flight cap holds the rest back), then stopped
    first = _run(tmp_path, emulator, "--max-in-flight", "200")
    await wait_for(lambda: _submitted(tmp_path, 200), what="two batches created")
    first.send_signal(signal.SIGTERM)
    assert finish(first)[0] == 3
    # the budget (it holds for the whole job) is spent already: the next request read
    # reaches it, and the action cancels the job, the two batches in flight included
    run = _run(
        tmp_path, emulator, "--max-in-flight", "200",
        "--budget-usd", "0.0001", "--budget-action", "cancel",
    )  # fmt: skip
    await wait_for(lambda: _cancel_under_way(tmp_path, emulator), what="batches canceling")
    await advance(emulator, 31)
    code, printed = finish(run)
    assert code == 4, printed
    assert "budget $0.0001 reached" in printed
    st = await status(tmp_path / "job.state")
    assert st is not None
    assert st.cancel == "canceled"
    # the two batches, canceled before any request ran (the clock never moved); the
    # requests waiting for room at the service were not sent
    assert (st.submitted, st.canceled) == (200, 200)
    assert (tmp_path / "out.jsonl").read_bytes() == b""
    batches = await batch_statuses(emulator)
    assert [b.request_counts.canceled for b in batches] == [100, 100]


async def _submitted(tmp: Path, n: int) -> bool:
    st = await status(tmp / "job.state")
    return st is not None and st.submitted >= n


async def _every_batch(url: str, processing_status: str) -> bool:
    batches = await batch_statuses(url)
    return bool(batches) and all(b.processing_status == processing_status for b in batches)


async def _cancel_under_way(tmp: Path, url: str) -> bool:
    """The cancel is recorded, no create is under way, and every batch the job
    created is canceling at the service."""
    st = await status(tmp / "job.state")
    if st is None or st.cancel != "requested":
        return False
    if any(b.state in ("intent", "sending") for b in st.batches):
        return False
    batches = await batch_statuses(url)
    return len(batches) == len(st.batches) and await _every_batch(url, "canceling")


async def test_worker_on_a_canceled_job_exits_4_until_resume_canceled(
    tmp_path: Path, emulator: str
) -> None:
    write_requests(tmp_path / "in.jsonl", REQUESTS)
    # a budget of $0 with the cancel action: canceled before anything is sent
    code, printed = finish(
        _run(tmp_path, emulator, "--budget-usd", "0", "--budget-action", "cancel")
    )
    assert code == 4, printed
    definition = tmp_path / "job.py"
    definition.write_text(
        "import os\n"
        "from pipeline import Pipeline, PipelineConfig\n"
        f"pipeline = Pipeline({str(tmp_path / 'in.jsonl')!r}, {str(tmp_path / 'out.jsonl')!r},\n"
        f"    state={str(tmp_path / 'job.state')!r}, base_url={emulator!r},\n"
        "    config=PipelineConfig(dry_run='off', poll_interval=0.05, linger_seconds=0.02,\n"
        f"        max_batch_requests={BATCH}))\n"
    )
    code, printed = finish(command("worker", str(definition), "--progress", "off"))
    assert code == 4, printed
    assert "this job was canceled" in printed
    assert await submissions(emulator) == {}
    worker = command("worker", str(definition), "--progress", "off", "--resume-canceled")
    await wait_for(lambda: _submitted(tmp_path, REQUESTS), what="the job sent")
    await advance(emulator, 61)
    code, printed = finish(worker)
    assert code == 0, printed
    assert Counter(output_outcomes(tmp_path / "out.jsonl").values()) == {"succeeded": REQUESTS}
