"""The state file: foreign, corrupt and locked files are refused and left untouched;
a process killed in the middle of writing leaves whole transactions only."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from pipeline._errors import LedgerError
from pipeline.cli import main
from pipeline.ledger import JobSpec, SQLiteLedger, read_status

from ._helpers import JOB, entry, held_ids

if TYPE_CHECKING:
    from pathlib import Path


def snapshot(path: Path) -> tuple[bytes, int]:
    return path.read_bytes(), path.stat().st_mtime_ns


async def test_foreign_job_is_refused_and_nothing_is_overwritten(state_path: Path) -> None:
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    await led.claim([entry(1)], [], checkpoint=100, line=1)
    await led.aclose()
    before = snapshot(state_path)
    other = JobSpec(
        input_path="other.jsonl",
        input_fingerprint="zzz",
        output_path="out.jsonl",
        rejects_path=None,
    )
    with pytest.raises(LedgerError, match="belongs to another job") as info:
        await SQLiteLedger(state_path).open(other)
    assert "other.jsonl" in str(info.value)
    assert snapshot(state_path) == before
    led = SQLiteLedger(state_path)  # the lock was released by the refused open
    assert not (await led.open(JOB)).fresh
    await led.aclose()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"input_path": "other.jsonl"}, "it reads in.jsonl, not other.jsonl; give this job"),
        (
            {"input_fingerprint": "4006:ff"},
            "the input in.jsonl changed since the job started (3,273 bytes then, 4,006 now): "
            "a state file serves its input as it was",
        ),
        (
            {"output_path": "else.jsonl"},
            "it writes out.jsonl (rejects: None), not else.jsonl (rejects: None); give",
        ),
    ],
)
async def test_another_job_is_told_what_differs(
    state_path: Path, change: dict[str, str], reason: str
) -> None:
    job = msgspec.structs.replace(JOB, input_fingerprint="3273:aa")
    await (led := SQLiteLedger(state_path)).open(job)
    await led.aclose()
    with pytest.raises(LedgerError) as info:
        await SQLiteLedger(state_path).open(msgspec.structs.replace(job, **change))
    assert str(info.value).startswith(f"state file {state_path}: belongs to another job: {reason}")
    assert str(info.value).endswith(
        "give this job its own --output (its state goes next to it), or remove the state"
    )


async def test_a_file_that_is_not_sqlite_is_refused_untouched(state_path: Path) -> None:
    state_path.write_bytes(b"this is not a database, it is a shopping list\n" * 100)
    before = snapshot(state_path)
    with pytest.raises(LedgerError, match="not a usable pipeline state file"):
        await SQLiteLedger(state_path).open(JOB)
    assert snapshot(state_path) == before
    assert not os.path.exists(f"{state_path}-wal")
    with pytest.raises(LedgerError, match="not a usable pipeline state file"):
        await read_status(state_path)


async def test_another_sqlite_database_is_refused_untouched(state_path: Path) -> None:
    with sqlite3.connect(state_path) as conn:
        conn.execute("CREATE TABLE users(name TEXT)")
    before = snapshot(state_path)
    with pytest.raises(LedgerError, match="not a pipeline state file"):
        await SQLiteLedger(state_path).open(JOB)
    assert snapshot(state_path) == before


async def test_a_newer_schema_version_is_refused(state_path: Path) -> None:
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    await led.aclose()
    with sqlite3.connect(state_path) as conn:
        conn.execute("UPDATE meta SET value = 99 WHERE key = 'schema_version'")
    with pytest.raises(LedgerError, match="schema version 99"):
        await SQLiteLedger(state_path).open(JOB)


async def test_a_state_file_of_the_previous_schema_is_refused_untouched(
    state_path: Path,
) -> None:
    """Version 2 held a row per request (table ``requests``) and no runs of keys."""
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    await led.aclose()
    with sqlite3.connect(state_path) as conn:
        conn.execute("DROP TABLE runs")
        conn.execute("CREATE TABLE requests(custom_id TEXT PRIMARY KEY, loc TEXT NOT NULL)")
        conn.execute("UPDATE meta SET value = 2 WHERE key = 'schema_version'")
    before = snapshot(state_path)
    with pytest.raises(
        LedgerError, match="has schema version 2; this pipeline reads versions 3 to 5"
    ) as e:
        await SQLiteLedger(state_path).open(JOB)
    assert "finish the job with the pipeline release that started it" in str(e.value)
    assert snapshot(state_path) == before


async def test_a_damaged_state_is_refused(state_path: Path) -> None:
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    await led.aclose()
    with sqlite3.connect(state_path) as conn:
        conn.execute("DROP TABLE spool")
    with pytest.raises(LedgerError, match="tables missing: spool"):
        await SQLiteLedger(state_path).open(JOB)


async def test_a_missing_directory_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(LedgerError, match="its directory .* does not exist"):
        await SQLiteLedger(tmp_path / "nope" / "job.state").open(JOB)


async def test_second_opener_is_refused_while_the_first_holds_it(state_path: Path) -> None:
    first = SQLiteLedger(state_path)
    await first.open(JOB)
    with pytest.raises(LedgerError, match="in use by another process"):
        await SQLiteLedger(state_path).open(JOB)
    status = await read_status(state_path)  # status needs no lock
    assert status.worker_running
    await first.aclose()
    assert not (await read_status(state_path)).worker_running
    second = SQLiteLedger(state_path)
    await second.open(JOB)
    await second.aclose()


async def test_another_process_holding_the_state_is_refused(state_path: Path) -> None:
    code = f"""
        import anyio, sys
        from pipeline.ledger import SQLiteLedger
        from tests.ledger._helpers import JOB
        async def main():
            led = SQLiteLedger({str(state_path)!r})
            await led.open(JOB)
            print("open", flush=True)
            sys.stdin.readline()
            await led.aclose()
        anyio.run(main)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.getcwd(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"open\n"
        with pytest.raises(LedgerError, match="in use"):
            await SQLiteLedger(state_path).open(JOB)
        status = await read_status(state_path)
        assert status.worker_running
        assert status.job == JOB
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]
    # the kernel drops the lock of a killed process
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    await led.aclose()


async def test_kill_in_the_middle_of_writes_leaves_whole_transactions(state_path: Path) -> None:
    """A writer claims 500-request batches in a loop and is SIGKILLed mid-stream;
    every batch on disk has exactly its requests, and the checkpoint matches them."""
    code = f"""
        import anyio
        from pipeline.ledger import SQLiteLedger
        from tests.ledger._helpers import JOB, entry
        async def main():
            led = SQLiteLedger({str(state_path)!r})
            await led.open(JOB)
            n = 0
            while True:
                es = [entry(i) for i in range(n + 1, n + 501)]
                n += 500
                await led.claim(es, [], checkpoint=n * 100, line=n)
                print(n, flush=True)
        anyio.run(main)
    """
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)], stdout=subprocess.PIPE, cwd=os.getcwd()
    )
    assert proc.stdout is not None
    for _ in range(5):  # let it commit a few, then kill it while it writes more
        proc.stdout.readline()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    led = SQLiteLedger(state_path)
    state = await led.open(JOB)
    await led.aclose()
    assert state.source_line >= 2500
    assert state.source_line % 500 == 0
    with sqlite3.connect(state_path) as conn:
        # each batch's requests are one msgpack record of columns ({"i": ids, "l": lines, ...})
        records = conn.execute(
            "SELECT b.request_count, r.reqs FROM batches AS b JOIN batch_requests AS r "
            "USING (local_id)"
        ).fetchall()
        keys = held_ids(conn)
    per_batch = [(want, msgspec.msgpack.decode(reqs)) for want, reqs in records]
    assert all(want == len(have["i"]) == len(have["l"]) == 500 for want, have in per_batch)
    lines = [n for _, have in per_batch for n in have["l"]]
    assert sorted(lines) == list(range(1, state.source_line + 1))
    assert keys == state.source_line  # every claimed custom_id is held in the runs
    assert len(state.pending_intents) == state.source_line // 500
    led = SQLiteLedger(state_path)
    await led.open(JOB)  # and every one of them is known after the crash
    again = await led.claim([entry(1), entry(2, cid="req-7")], [], checkpoint=0, line=0)
    await led.aclose()
    assert (again.skipped, again.duplicates) == ([0], [1])


async def test_status_reads_while_a_writer_commits(state_path: Path) -> None:
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    try:
        async with anyio.create_task_group() as tg:

            async def write() -> None:
                for k in range(20):
                    es = [entry(i) for i in range(k * 50 + 1, k * 50 + 51)]
                    await led.claim(es, [], checkpoint=(k + 1) * 5000, line=(k + 1) * 50)

            tg.start_soon(write)
            seen = []
            for _ in range(20):
                status = await read_status(state_path)
                assert status.read == sum(b.request_count for b in status.batches)
                seen.append(status.read)
                await anyio.sleep(0)
        assert seen == sorted(seen)
        assert (await read_status(state_path)).read == 1000
    finally:
        await led.aclose()


async def test_a_second_process_is_refused_however_it_names_the_state(
    state_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One worker per job: the lock is the state file's own, so another name for it
    (a symlink passed as --state, a hard link, a relative path) reaches the same
    lock, and removing a lock file beside it (there is none now) lets no second
    worker in."""
    code = f"""
        import anyio, sys
        from pipeline.ledger import SQLiteLedger
        from tests.ledger._helpers import JOB
        async def main():
            led = SQLiteLedger({str(state_path)!r})
            await led.open(JOB)
            print("open", flush=True)
            sys.stdin.readline()
            await led.aclose()
        anyio.run(main)
    """
    link, hard = state_path.with_name("link.state"), state_path.with_name("hard.state")
    link.symlink_to(state_path)
    proc = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        cwd=os.getcwd(),
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"open\n"
        os.link(state_path, hard)
        for lock in state_path.parent.glob("*.lock"):  # what beat the old lock
            lock.unlink()
        monkeypatch.chdir(state_path.parent)
        for name in (link, hard, type(state_path)(state_path.name), state_path):
            with pytest.raises(LedgerError, match="in use by another process"):
                await SQLiteLedger(name).open(JOB)
            assert (await read_status(name)).worker_running, name
    finally:
        proc.kill()
        proc.wait()
        proc.stdin.close()  # type: ignore[union-attr]
        proc.stdout.close()  # type: ignore[union-attr]
    led = SQLiteLedger(link)  # the holder is gone: its lock with it
    await led.open(JOB)
    await led.aclose()


async def test_a_second_ledger_in_one_process_is_refused_by_any_name(state_path: Path) -> None:
    """In one process too (without disturbing the holder's own SQLite locks: the
    holder goes on writing after the refusal)."""
    link = state_path.with_name("link.state")
    link.symlink_to(state_path)
    first = SQLiteLedger(state_path)
    await first.open(JOB)
    with pytest.raises(LedgerError, match="in use by another process"):
        await SQLiteLedger(link).open(JOB)
    assert (await read_status(link)).worker_running
    await first.claim([entry(1)], [], checkpoint=100, line=1)
    await first.aclose()
    assert not (await read_status(link)).worker_running
    second = SQLiteLedger(link)
    assert not (await second.open(JOB)).fresh
    await second.aclose()


def test_an_sqlite_error_mid_job_is_one_line_naming_the_file(state_path: Path) -> None:
    """A write the file system refuses in the middle of a job (here: the file size
    limit, as a full disk would) is a ``LedgerError``: one line naming the state
    file and what to do, the whole claim rolled back."""
    code = f"""
        import anyio, resource, signal
        from pipeline import LedgerError
        from pipeline.ledger import SQLiteLedger
        from tests.ledger._helpers import JOB, entry
        async def main():
            led = SQLiteLedger({str(state_path)!r})
            await led.open(JOB)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))
            n = 0
            try:
                while n < 10**6:
                    await led.claim([entry(i) for i in range(n + 1, n + 2001)], [],
                                    checkpoint=(n + 2000) * 100, line=n + 2000)
                    n += 2000
            except LedgerError as exc:
                print(n, type(exc.__cause__).__name__, exc, sep="\\n")
            await led.aclose()
        anyio.run(main)
    """
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        cwd=os.getcwd(),
        timeout=60,
    )
    assert done.returncode == 0, done.stderr.decode()
    claimed, cause, message = done.stdout.decode().splitlines()
    assert cause == "OperationalError"
    assert message.startswith(f"state file {state_path}: cannot be read or written (")
    assert "check the disk (full?" in message
    assert message.endswith("then run the same command again to resume")
    with sqlite3.connect(state_path) as conn:  # whole claims only: batches and their keys
        assert conn.execute("SELECT sum(request_count) FROM batches").fetchone()[0] == int(claimed)
        assert held_ids(conn) == int(claimed)


async def status_command(*args: str) -> int:
    """``pipeline status ARGS`` (the command runs its own event loop: in a thread)."""
    return await anyio.to_thread.run_sync(main, ["status", *args])


async def test_a_damaged_page_is_found_at_open_and_by_status_check(
    state_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A page of the requests (their keys) zeroed on disk (not one that opening reads): the open
    refuses the file at once, in one line, instead of a claim meeting the damage in
    the middle of the job; ``pipeline status --check`` finds it too (exit 1)."""
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    for n in range(0, 20_000, 2_000):
        es = [entry(i, cid=f"request-{i:08d}-" + "x" * 40) for i in range(n + 1, n + 2001)]
        await led.claim(es, [], checkpoint=(n + 2000) * 100, line=n + 2000)
    await led.aclose()
    with state_path.open("rb") as f:  # the page size, from the database header
        f.seek(16)
        page = int.from_bytes(f.read(2), "big") or 65536
    pages = state_path.stat().st_size // page
    assert pages > 20
    with state_path.open("r+b") as f:
        f.seek((pages - 3) * page)
        f.write(bytes(page))
    assert await status_command("--state", str(state_path)) == 0  # reads no damaged page
    capsys.readouterr()
    with pytest.raises(LedgerError, match="is damaged") as info:
        await SQLiteLedger(state_path).open(JOB)
    assert "\n" not in str(info.value)
    assert str(info.value).endswith("remove it (and its -wal file) to start the job over")
    assert await status_command("--state", str(state_path), "--check") == 1
    err = capsys.readouterr().err
    assert err.startswith(f"pipeline status: state file {state_path}: is damaged (")
    assert len(err.splitlines()) == 1


async def test_status_check_of_a_sound_state_says_ok(
    state_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    await led.claim([entry(1)], [], checkpoint=100, line=1)
    assert await status_command("--state", str(state_path), "--check") == 0  # beside a worker
    assert "integrity  ok (SQLite's full check)" in capsys.readouterr().out
    await led.aclose()
    assert await status_command("--state", str(state_path), "--check", "--json") == 0
    assert msgspec.json.decode(capsys.readouterr().out)["integrity"] == "ok"
