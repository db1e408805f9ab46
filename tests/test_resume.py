"""Life of a worker: graceful shutdown, resume after a broken download, creates of
unknown outcome, refused state files, and a finished job re-run.

Each test runs ``python -m pipeline run`` in a subprocess against one emulator
process, in a workspace of its own (its own API key)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from typing import TYPE_CHECKING

import anyio
import pytest

from pipeline.ledger import JobSpec, SQLiteLedger
from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator, start_emulator_process

from .ledger.jobs import (
    output_ids,
    recorded_attempts,
    size,
    start_worker,
    status_of,
    submissions,
    write_input,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from pipeline.ledger import JobStatus


@pytest.fixture(scope="module")
def emulator() -> Iterator[str]:
    with start_emulator_process(
        "--batch-seconds", "0.3", "--cut-rate", "0.3", "--request-error-rate", "0.02"
    ) as url:
        yield url


async def wait_for(
    tmp: Path, worker: subprocess.Popen[bytes], cond: Callable[[JobStatus], bool]
) -> JobStatus:
    """Poll the state (bounded) until ``cond`` holds; fail if the worker exits first."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        assert worker.poll() is None, "the worker exited before the moment to test"
        status = await status_of(tmp / "job.state")
        if status is not None and cond(status):
            return status
        await anyio.sleep(0.005)
    raise AssertionError("timed out waiting for the job to get there")


def created(status: JobStatus) -> bool:
    return any(b.state == "created" for b in status.batches)


def finish(url: str, tmp: Path, **kw: object) -> str:
    """Run the job to the end; its stderr."""
    worker = start_worker(url, tmp, **kw)  # type: ignore[arg-type]
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err.decode()
    return err.decode()


async def assert_exactly_once(url: str, tmp: Path, ids: list[str]) -> None:
    """Every custom_id once in the output; each submitted once per recorded attempt."""
    written = output_ids(tmp / "out.jsonl")
    assert len(written) == len(set(written)), "an output line was duplicated"
    assert sorted(written) == ids
    attempts = await recorded_attempts(tmp / "job.state", ids)
    submitted = {c: n for c, n in (await submissions(url)).items() if c in attempts}
    assert submitted == attempts, "a request was paid for twice (or never sent)"


async def test_sigterm_stops_gracefully_and_a_rerun_completes(
    emulator: str, tmp_path: Path
) -> None:
    ids, _ = write_input(tmp_path / "in.jsonl", 1500, prefix="term")
    worker = start_worker(emulator, tmp_path, api_key="term")
    await wait_for(tmp_path, worker, created)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode == 3, err.decode()  # stopped, not finished: resumable
    assert b"stopping gracefully" in err
    status = await status_of(tmp_path / "job.state")
    assert status is not None
    assert not status.finished
    assert not status.worker_running
    assert [b for b in status.batches if b.state in ("intent", "sending")] == []
    assert size(tmp_path / "out.jsonl") == status.output.offset  # flushed and committed
    assert len(output_ids(tmp_path / "out.jsonl")) == status.output.count
    assert "resuming" in finish(emulator, tmp_path, api_key="term")
    await assert_exactly_once(emulator, tmp_path, ids)


async def test_a_second_signal_exits_at_once_and_stays_consistent(
    emulator: str, tmp_path: Path
) -> None:
    ids, _ = write_input(tmp_path / "in.jsonl", 1500, prefix="twice")
    worker = start_worker(emulator, tmp_path, api_key="twice")
    await wait_for(tmp_path, worker, created)
    worker.send_signal(signal.SIGTERM)
    worker.send_signal(signal.SIGTERM)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode in (3, 128 + signal.SIGTERM), err.decode()
    finish(emulator, tmp_path, api_key="twice")
    await assert_exactly_once(emulator, tmp_path, ids)


async def test_kill_during_a_results_download_resumes_without_duplicates(
    emulator: str, tmp_path: Path
) -> None:
    """Killed while result lines are written but not yet committed (the emulator
    also cuts some downloads in the middle): the restart truncates the output to
    its last commit, downloads again and writes only the missing lines."""
    ids, _ = write_input(tmp_path / "in.jsonl", 1200, prefix="dl")
    for _ in range(3):
        worker = start_worker(emulator, tmp_path, api_key="dl")
        await wait_for(
            tmp_path,
            worker,
            lambda s: (
                any(b.state == "ended" for b in s.batches)
                or size(tmp_path / "out.jsonl") > s.output.offset
            ),
        )
        worker.send_signal(signal.SIGKILL)
        worker.communicate()
    finish(emulator, tmp_path, api_key="dl")
    await assert_exactly_once(emulator, tmp_path, ids)


def forget_creates(
    state: Path, how_many: int, states: tuple[str, ...] = ("created", "ended")
) -> list[tuple[int, str]]:
    """Make the ledger forget the batch id of ``how_many`` batches of the same size
    in ``states`` (created, or already ended), as if the worker had died between the
    POST and its commit."""
    marks = ", ".join("?" * len(states))
    with sqlite3.connect(state) as conn:
        found = conn.execute(
            "SELECT local_id, batch_id, request_count, state FROM batches "
            f"WHERE state IN ({marks}) ORDER BY local_id",
            states,
        ).fetchall()
        by_size: dict[int, list[tuple[int, str, int, str]]] = {}
        for row in found:
            by_size.setdefault(row[2], []).append(row)
        rows = next((group for group in by_size.values() if len(group) >= how_many), [])
        rows = rows[:how_many]
        assert len(rows) == how_many
        for local_id, _, count, was in rows:
            conn.execute(
                "UPDATE batches SET state = 'sending', batch_id = NULL WHERE local_id = ?",
                (local_id,),
            )
            conn.execute("UPDATE counters SET value = value - ? WHERE name = 'submitted'", (count,))
            if was == "ended":
                conn.execute("UPDATE counters SET value = value - ? WHERE name = 'ended'", (count,))
    return [(local_id, batch_id) for local_id, batch_id, _, _ in rows]


def same_size_in_flight(status: JobStatus, n: int) -> bool:
    """At least ``n`` batches of one size created (or ended) and not yet collected."""
    sizes: dict[int, int] = {}
    for b in status.batches:
        if b.state in ("created", "ended"):
            sizes[b.request_count] = sizes.get(b.request_count, 0) + 1
    return any(count >= n for count in sizes.values())


async def kill_with_creates_settled(url: str, tmp: Path, key: str, n: int) -> None:
    """SIGKILL the worker once ``n`` batches of one size are created and no other
    create is under way (it is frozen with SIGSTOP while the state is checked), so
    that the only unknown outcomes are the ones the test makes."""
    worker = start_worker(url, tmp, api_key=key)
    try:
        for _ in range(1000):
            await wait_for(tmp, worker, lambda s: same_size_in_flight(s, n))
            worker.send_signal(signal.SIGSTOP)
            status = await status_of(tmp / "job.state")
            assert status is not None
            settled = all(b.state not in ("intent", "sending") for b in status.batches)
            if settled and same_size_in_flight(status, n):
                break
            worker.send_signal(signal.SIGCONT)
            await anyio.sleep(0.005)
    finally:  # also when the test fails: no worker or pipe left behind
        worker.send_signal(signal.SIGKILL)
        worker.communicate()


async def test_an_unknown_outcome_create_is_adopted_not_sent_again(
    emulator: str, tmp_path: Path
) -> None:
    ids, _ = write_input(tmp_path / "in.jsonl", 1000, prefix="adopt")
    await kill_with_creates_settled(emulator, tmp_path, "adopt", 1)
    [(local_id, batch_id)] = forget_creates(tmp_path / "job.state", 1)
    err = finish(emulator, tmp_path, api_key="adopt")
    assert "1 found at the service" in err
    with sqlite3.connect(tmp_path / "job.state") as conn:
        row = conn.execute("SELECT batch_id FROM batches WHERE local_id = ?", (local_id,))
        assert row.fetchone() == (batch_id,)
    await assert_exactly_once(emulator, tmp_path, ids)


async def test_an_undecidable_create_fails_loudly_then_the_user_settles_it(
    emulator: str, tmp_path: Path
) -> None:
    # (2,000 lines: the moment with two batches of one size in flight and no create
    # under way comes many times over before the job ends, also on a loaded machine)
    ids, _ = write_input(tmp_path / "in.jsonl", 2000, prefix="ambi")
    await kill_with_creates_settled(emulator, tmp_path, "ambi", 2)
    # one of the two may have ended already when the worker was killed
    forgotten = forget_creates(tmp_path / "job.state", 2)
    before = await submissions(emulator)
    worker = start_worker(emulator, tmp_path, api_key="ambi")
    _, err = worker.communicate(timeout=60)
    assert worker.returncode == 1
    message = err.decode()
    for _, batch_id in forgotten:
        assert batch_id in message
    assert "--adopt" in message
    assert await submissions(emulator) == before  # nothing was sent
    for local_id, batch_id in forgotten:  # the user looked, and adopts the right ones
        status = subprocess.run(
            [sys.executable, "-m", "pipeline", "status", "--state", str(tmp_path / "job.state"),
             "--adopt", f"{local_id}={batch_id}"],
            capture_output=True, check=False,
        )  # fmt: skip
        assert status.returncode == 0, status.stderr
    finish(emulator, tmp_path, api_key="ambi")
    await assert_exactly_once(emulator, tmp_path, ids)


async def test_corrupt_and_foreign_state_files_are_refused_untouched(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 10, prefix="refuse")
    state = tmp_path / "job.state"
    state.write_bytes(b"\x00garbage, not SQLite\n" * 500)
    worker = start_worker("http://127.0.0.1:9", tmp_path)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode != 0
    reason = err.decode().strip().splitlines()[-1]  # the one-line reason comes last
    assert reason.startswith("pipeline run: failed: state file"), reason
    assert "not a usable pipeline state file" in reason
    assert state.read_bytes() == b"\x00garbage, not SQLite\n" * 500
    assert not (tmp_path / "out.jsonl").exists()

    state.unlink()
    other = JobSpec(
        input_path="/elsewhere/other.jsonl",
        input_fingerprint="1:x",
        output_path="/elsewhere/out.jsonl",
        rejects_path=None,
    )
    led = SQLiteLedger(state)
    await led.open(other)
    await led.aclose()
    before = state.read_bytes()
    worker = start_worker("http://127.0.0.1:9", tmp_path)
    _, err = worker.communicate(timeout=30)
    assert worker.returncode != 0
    assert b"belongs to another job" in err
    assert state.read_bytes() == before


async def test_a_finished_job_rerun_is_a_noop_that_says_so(emulator: str, tmp_path: Path) -> None:
    ids, _ = write_input(tmp_path / "in.jsonl", 150, prefix="noop")
    finish(emulator, tmp_path, api_key="noop")
    output = (tmp_path / "out.jsonl").read_bytes()
    before = await submissions(emulator)
    err = finish(emulator, tmp_path, api_key="noop")
    assert "already finished" in err
    assert (tmp_path / "out.jsonl").read_bytes() == output
    assert await submissions(emulator) == before
    await assert_exactly_once(emulator, tmp_path, ids)


async def test_a_batch_of_another_job_adopted_by_mistake_loses_no_request(
    emulator: str, tmp_path: Path
) -> None:
    """An intent's create left no trace (the worker died mid-POST, or the POST never
    got out), and another job in the same workspace made a batch of the same size at
    about the same time: reconciliation adopts it, as it cannot tell. None of that
    batch's results is written (they are not ours), and the intent's own requests,
    which got no result line, are spooled and sent: the job still ends complete."""
    import msgspec

    from pipeline import Pipeline
    from pipeline.api._client import Client
    from pipeline.stages._items import Entry

    ids, _ = write_input(tmp_path / "in.jsonl", 200, prefix="mine")
    spec = Pipeline(
        tmp_path / "in.jsonl",
        tmp_path / "out.jsonl",
        tmp_path / "rejects.jsonl",
        state=tmp_path / "job.state",
    ).job_spec()
    ledger = SQLiteLedger(tmp_path / "job.state")
    await ledger.open(spec)
    entries, offset = [], 0
    for number, raw in enumerate((tmp_path / "in.jsonl").read_bytes().splitlines(True)[:100], 1):
        cid = msgspec.json.decode(raw)["custom_id"]
        entries.append(Entry(number, cid, raw.rstrip(b"\n"), offset, offset + len(raw)))
        offset += len(raw)
    claim = await ledger.claim(entries, [], checkpoint=offset, line=100)
    await ledger.record_sending(claim.local_id, body_bytes=1, sent_at=time.time())
    await ledger.aclose()
    async with Client(api_key="foreign", base_url=emulator) as client:
        other = [
            {
                "custom_id": f"other-{i}",
                "params": {
                    "model": "claude-3-haiku-20240307",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            }
            for i in range(100)
        ]
        await client.create_batch(msgspec.json.encode({"requests": other}), request_count=100)

    err = finish(emulator, tmp_path, api_key="foreign")
    assert "1 found at the service" in err  # adopted, as the tell-tales matched
    assert "returned no result for 100 of its requests" in err
    out = output_ids(tmp_path / "out.jsonl")
    assert sorted(out) == sorted(ids)  # ours, each once; none of theirs
    sent = await submissions(emulator)
    # the emulator fails a few requests for the retries to re-send (max 3 attempts)
    assert all(1 <= sent.get(cid, 0) <= 3 for cid in ids)


async def test_a_second_worker_through_a_symlinked_state_is_refused(tmp_path: Path) -> None:
    """Two `pipeline run` processes on one job, the second given a symlink to the
    state file as --state: it is refused (exit 1, one line) and the first finishes
    with every result written once. The emulator's clock stands still until the
    second was refused, so the first cannot have finished (and let go) before."""
    ids, _ = write_input(tmp_path / "in.jsonl", 300, prefix="link")
    (tmp_path / "link.state").symlink_to(tmp_path / "job.state")
    async with serve_emulator(EmulatorConfig(batch_seconds=60, clock=ManualClock())) as emu:
        first = start_worker(emu.url, tmp_path, batch=300, api_key="symlink")
        await wait_for(tmp_path, first, created)  # its one batch
        second = start_worker(
            emu.url, tmp_path, "--state", str(tmp_path / "link.state"), api_key="symlink"
        )
        _, err = await anyio.to_thread.run_sync(lambda: second.communicate(timeout=30))
        assert second.returncode == 1, err.decode()
        reason = err.decode().strip().splitlines()[-1]
        assert reason.startswith("pipeline run: failed: state file"), reason
        assert "in use by another process" in reason
        emu.advance(61)
        _, err = await anyio.to_thread.run_sync(lambda: first.communicate(timeout=60))
        assert first.returncode == 0, err.decode()
        await assert_exactly_once(emu.url, tmp_path, ids)


@contextlib.contextmanager
def unwritable(path: Path) -> Iterator[None]:
    """``path`` cannot be written by this user while inside: read-only, or for root
    (who writes read-only files) immutable (``chattr +i``)."""
    if os.geteuid() != 0:
        path.chmod(0o444)
        try:
            yield
        finally:
            path.chmod(0o644)
        return
    chattr = shutil.which("chattr")
    if chattr is None or subprocess.run([chattr, "+i", str(path)]).returncode != 0:
        pytest.skip("root, and the file system cannot make a file immutable")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", str(path)], check=True)


async def test_an_unwritable_state_file_on_resume_is_one_line_and_exit_1(
    emulator: str, tmp_path: Path
) -> None:
    """A read-only (or immutable) state file on resume: one line that names the
    file and says what to do, exit 1, no traceback; made writable again, the job
    resumes and finishes, every result once."""
    ids, _ = write_input(tmp_path / "in.jsonl", 200, prefix="frozen")
    worker = start_worker(emulator, tmp_path, api_key="frozen")
    await wait_for(tmp_path, worker, created)
    worker.kill()
    worker.communicate(timeout=30)
    with unwritable(tmp_path / "job.state"):
        again = start_worker(emulator, tmp_path, api_key="frozen")
        _, err = again.communicate(timeout=30)
    text = err.decode()
    assert again.returncode == 1, text
    assert "Traceback" not in text
    reason = text.strip().splitlines()[-1]
    assert reason.startswith(f"pipeline run: failed: state file {tmp_path / 'job.state'}: ")
    assert "make the file and its directory writable" in reason
    finish(emulator, tmp_path, api_key="frozen")
    await assert_exactly_once(emulator, tmp_path, ids)


async def test_a_finished_job_whose_output_was_cut_short_says_so(
    emulator: str, tmp_path: Path
) -> None:
    """The output of a finished job cut short by hand: a re-run is not 'already
    finished, exit 0' but one line naming the output file, exit 1, nothing changed."""
    write_input(tmp_path / "in.jsonl", 20, prefix="cut")
    finish(emulator, tmp_path, api_key="cut")
    out = tmp_path / "out.jsonl"
    whole = out.read_bytes()
    out.write_bytes(whole[: len(whole) // 2])
    worker = start_worker(emulator, tmp_path, api_key="cut")
    _, err = worker.communicate(timeout=30)
    text = err.decode()
    assert worker.returncode == 1, text
    assert "already finished" not in text
    reason = text.strip().splitlines()[-1]
    assert reason.startswith(f"pipeline run: failed: file {out}: is {len(whole) // 2:,} bytes, ")
    assert f"shorter than the {len(whole):,} bytes the job's state file says" in reason
    assert out.read_bytes() == whole[: len(whole) // 2]
