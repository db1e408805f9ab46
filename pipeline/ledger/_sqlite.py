"""The embedded ledger: one SQLite file per job.

One connection, used by one task at a time (an ``anyio.Lock``), every call run in
a worker thread (``anyio.to_thread.run_sync``) so the event loop never blocks on
disk. Each protocol method is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``,
rolled back on any error), with rows written by ``executemany`` per batch or per
sink flush, never per request. This module holds the class: opening, locking and
the transaction runner; the longer transaction bodies (the claim, spooling what a
collected batch missed) and the SQL and helpers they share are in ``_sqlite_tx``.

Durability. The database runs in WAL mode with ``synchronous=NORMAL``: a commit
is in the WAL (the OS has it) before the call returns, so a killed process loses
nothing; a power loss may lose the last few commits, but never a commit without
the ones before it (WAL frames are checksummed in sequence). Losing a recent
commit is safe for every step but one: a lost claim is re-read from the source, a
lost sink position truncates the output back and writes again, a lost
``record_created`` is adopted by reconciliation. ``record_sending`` is the
exception: if it were lost while its POST went out, the intent would look unsent
and be sent again. So that one transaction commits with ``synchronous=FULL`` (an
fsync of the WAL, once per batch) before the POST may start. The sinks must fsync
their own files before ``commit_results`` / ``commit_rejects``.

Identity and exclusion. The ``meta`` table holds the schema version and the
``JobSpec``; ``open`` refuses a file of another job, a file that is not SQLite or
not a pipeline state, a damaged one (``PRAGMA quick_check``), and a state another
process holds, however it is named (an exclusive ``flock`` on the state file itself,
released by the kernel when the holder dies: ``_files.JobLock``). ``read_status``
reads a state file without the lock, read-only, while a worker runs. Every SQLite
error leaves as a one-line ``LedgerError`` naming the file and what to do.

Memory and cost. A batch's requests are one row while it is in flight (their
ids, source lines and locations as one msgpack record, dropped once the batch is
collected), and the job's custom_ids are 80-bit keys, a packed row per claim, with
a Bloom filter in memory (``_sqlite_ids``): a claim writes one batch row and one row
of keys, whatever the ids look like, and defers the few requests whose id the filter
cannot rule out (resolved many at once), so its cost does not grow with the job. The
filter is the one thing in memory that grows with the job: about 1.5 bytes per id
(none while the job's ids go up: such ids are new by a comparison with the greatest).
Counters live in the database, rejects and spool are paged. The page cache is
small (``_CACHE_KIB``).

Cost per result. ``commit_results`` appends one row per commit (the written
custom_ids as one JSON array, table ``written``), not one UPDATE per line;
``unwritten`` subtracts them from the batch's claimed rows, and they are dropped
when the batch is collected.
"""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread

from .._errors import LedgerError, UsageError
from ..stages._items import Reject, RejectError
from . import _cancel
from ._base import SpoolItem
from ._files import JobLock, damaged, integrity_problems, ledger_error, transaction
from ._sqlite_ids import IdIndex
from ._sqlite_schema import (
    APP_TAG,
    SCHEMA,
    SCHEMA_VERSION,
    cancel_state,
    check_meta,
    connect,
    decode_job,
    job_status,
    meta_value,
    resume_state,
    table_names,
    upgrade,
)
from ._sqlite_tx import (
    MemberCache,
    WrittenIds,
    _bump,
    _claim,
    _encode,
    _expect,
    _insert_rejects,
    _move_checkpoint,
    _new_intent,
    _reject_row,
    _settle_batch,
    attempts_of,
    done_ids,
    drop_batch,
    members_of,
    resolve,
    spool_members,
    stored_elsewhere,
)

if TYPE_CHECKING:
    import os
    from collections.abc import Callable, Mapping, Sequence

    from ..stages._items import Entry
    from ._base import ClaimResult, JobSpec, JobStatus, ResumeState, Settled, SinkPosition

__all__ = ("SQLiteLedger",)

T = TypeVar("T")

#: Page cache of the connection (bounded: memory stays flat), KiB. Claims walk
#: the custom_id index in key order (each page is loaded once per claim), so a
#: small cache costs little; 32 MiB made the process grow by ~35 MB at 1M requests.
_CACHE_KIB = 4 * 1024
#: Pages of a new state file. Nothing is inserted at random places any more (keys and
#: batch records are a row per claim). 16 KiB pages measured no faster at ten million
#: random ids (RESULTS.md, fifth session on issue 17).
_PAGE_SIZE = 4096
#: WAL pages before an automatic checkpoint (default 1000): the WAL file on disk
#: grows to about this size (64 MiB) and is reused, the process's memory does not.
_CHECKPOINT_PAGES = (64 << 20) // _PAGE_SIZE
#: bytes of input per request assumed when sizing the filter of keys from the
#: input's size (more requests than that grow it: see ``KeyFilter``)
_BYTES_PER_REQUEST_GUESS = 600


class SQLiteLedger:
    """The embedded SQLite ledger of one job (see the module docstring).

    ``SQLiteLedger(path)`` does no I/O; ``await ledger.open(job)`` creates or checks
    the file and takes the exclusive lock; ``await ledger.aclose()`` releases both.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock = JobLock(self.path)
        self._mutex = anyio.Lock()
        #: the written ids of the batch ``unwritten`` was asked about last
        self._written: WrittenIds | None = None
        #: the job's custom_ids (keys in the database, a filter in memory)
        self._index = IdIndex()
        #: decoded records of batches in flight, for ``requests``
        self._members = MemberCache()

    def __repr__(self) -> str:
        return f"SQLiteLedger({str(self.path)!r})"

    # -- plumbing ------------------------------------------------------------------

    async def _run(self, fn: Callable[[sqlite3.Connection], T], *, fsync: bool = False) -> T:
        """Run ``fn`` as one transaction in a worker thread, one call at a time;
        ``fsync``: commit with ``synchronous=FULL`` (durable against power loss)."""

        def tx(conn: sqlite3.Connection) -> T:
            if fsync:
                conn.execute("PRAGMA synchronous = FULL")
            try:
                with transaction(conn):
                    result = fn(conn)
            finally:
                if fsync:
                    conn.execute("PRAGMA synchronous = NORMAL")
            return result

        async with self._mutex:
            conn = self._conn
            if conn is None:
                raise UsageError(f"{self!r} is not open")
            try:
                return await anyio.to_thread.run_sync(tx, conn)
            except sqlite3.Error as exc:
                raise ledger_error(self.path, exc) from exc

    def _fail(self, reason: str) -> LedgerError:
        return LedgerError(str(self.path), reason)

    # -- open / close --------------------------------------------------------------

    async def open(self, job: JobSpec) -> ResumeState:
        """Create the state for ``job`` or check that the file holds ``job``; lock it."""
        if self._conn is not None:
            raise UsageError(f"{self!r} is already open")
        async with self._mutex:
            return await anyio.to_thread.run_sync(self._open_sync, job)

    async def open_existing(self) -> ResumeState:
        """Open an existing state for whatever job it holds (for tools such as
        ``pipeline status --adopt``); ``LedgerError`` when there is none."""
        if self._conn is not None:
            raise UsageError(f"{self!r} is already open")
        if not self.path.is_file():
            raise self._fail("does not exist")
        async with self._mutex:
            return await anyio.to_thread.run_sync(self._open_sync, None)

    def _open_sync(self, job: JobSpec | None) -> ResumeState:
        self._lock.acquire()
        try:
            conn = connect(self.path, readonly=False)
        except BaseException:
            self._lock.release()
            raise
        try:
            fresh = self._check_or_create(conn, job)
            if not fresh and (problems := integrity_problems(conn)):
                raise self._fail(damaged(problems))
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
            self._index.load(conn, _expected_requests(decode_job(meta_value(conn, "job"))))
            state = resume_state(conn, fresh)
            state.takeover_at = _takeover(conn, state)
        except sqlite3.Error as exc:
            conn.close()
            self._lock.release()
            raise ledger_error(self.path, exc, opening=True) from exc
        except BaseException:
            conn.close()
            self._lock.release()
            raise
        self._conn = conn
        return state

    def _check_or_create(self, conn: sqlite3.Connection, job: JobSpec | None) -> bool:
        """True when the file was fresh (and is now created for ``job``)."""
        tables = table_names(conn)
        if not tables:
            if job is None:
                raise self._fail("holds no job")
            conn.execute(f"PRAGMA page_size = {_PAGE_SIZE}")  # before the first table
            # One transaction: the script opens it, the meta rows join it.
            conn.executescript("BEGIN IMMEDIATE;" + SCHEMA)
            conn.executemany(
                "INSERT INTO meta VALUES (?, ?)",
                [
                    ("app", APP_TAG),
                    ("schema_version", SCHEMA_VERSION),
                    ("job", _encode(job)),
                    ("finished", 0),
                    ("created_at", time.time()),
                ],
            )
            conn.commit()
            return True
        version = check_meta(conn, tables, str(self.path))
        stored = decode_job(meta_value(conn, "job"))
        if job is not None and stored != job:
            raise self._fail(f"belongs to another job: {_job_change(stored, job)}")
        upgrade(conn, version)
        return False

    async def aclose(self) -> None:
        """Close the database and release the lock; idempotent."""
        async with self._mutex:
            conn, self._conn = self._conn, None
            if conn is not None:
                await anyio.to_thread.run_sync(conn.close)
            await anyio.to_thread.run_sync(self._lock.release)

    async def __aenter__(self) -> SQLiteLedger:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    # -- claims --------------------------------------------------------------------

    async def claim(
        self, entries: Sequence[Entry], rejects: Sequence[Reject], *, checkpoint: int, line: int
    ) -> ClaimResult:
        """Record a batch intent (see ``Ledger.claim``). When every entry is a
        duplicate no batch is recorded and ``local_id`` is 0: nothing to send."""
        index = self._index

        def tx(c: sqlite3.Connection) -> ClaimResult:
            try:
                return _claim(c, index, entries, rejects, checkpoint, line)
            except BaseException:
                index.reset()  # rolled back: the index reads the keys again
                raise

        return await self._run(tx)

    async def resolve_deferred(self) -> Settled:
        """Settle every deferred request now (see ``Ledger.resolve_deferred``): one
        read of the keys held."""
        index = self._index

        def tx(c: sqlite3.Connection) -> Settled:
            try:
                return resolve(c, index)
            except BaseException:
                index.reset()
                raise

        return await self._run(tx)

    async def record_rejects(self, rejects: Sequence[Reject], *, checkpoint: int, line: int) -> int:
        """Record rejects with no batch and move the source checkpoint; how many
        were new."""

        def tx(c: sqlite3.Connection) -> int:
            added = _insert_rejects(c, [_reject_row(r) for r in rejects])
            _move_checkpoint(c, checkpoint, line)
            return added

        return await self._run(tx)

    # -- batch life cycle ----------------------------------------------------------

    async def record_sending(self, local_id: int, *, body_bytes: int, sent_at: float) -> None:
        """Body size and send time, committed with an fsync before the POST starts."""

        def tx(c: sqlite3.Connection) -> None:
            _expect(c, local_id, ("intent", "sending"))
            c.execute(
                "UPDATE batches SET state = 'sending', body_bytes = ?, sent_at = ? "
                "WHERE local_id = ?",
                (body_bytes, sent_at, local_id),
            )

        await self._run(tx, fsync=True)  # a full fsync for this one commit (module doc)

    async def record_created(self, local_id: int, batch_id: str) -> None:
        """The service created the batch: from now on it is polled, never re-sent.
        Idempotent for the same ``batch_id``."""

        def tx(c: sqlite3.Connection) -> None:
            state, count = _expect(c, local_id, ("intent", "sending", "created"))
            if state == "created":
                known = c.execute(
                    "SELECT batch_id FROM batches WHERE local_id = ?", (local_id,)
                ).fetchone()[0]
                if known != batch_id:
                    raise UsageError(f"batch {local_id} was created as {known}, not {batch_id}")
                return  # recorded already (idempotent)
            other = c.execute(
                "SELECT local_id FROM batches WHERE batch_id = ?", (batch_id,)
            ).fetchone()
            if other is not None:
                raise UsageError(f"{batch_id} is batch {other[0]} of this job already")
            c.execute(
                "UPDATE batches SET state = 'created', batch_id = ?, "
                "sent_at = coalesce(sent_at, ?) WHERE local_id = ?",
                (batch_id, time.time(), local_id),
            )
            _bump(c, "submitted", count)

        await self._run(tx)

    async def resplit(self, local_id: int, parts: Sequence[Sequence[str]]) -> list[int]:
        """Move the intent's requests into new intents, one per part (after a 413)."""

        def tx(c: sqlite3.Connection) -> list[int]:
            count = _expect(c, local_id, ("intent", "sending"))[1]
            by_id = {m[0]: m for m in members_of(c, local_id)}
            new_ids, moved = [], 0
            for part in parts:
                members = [by_id.pop(cid) for cid in part if cid in by_id]
                moved += len(members)
                new_ids.append(_new_intent(c, members))
            if moved != count:
                raise UsageError(
                    f"resplit of batch {local_id} moved {moved} of its {count} requests"
                )
            drop_batch(c, local_id)
            return new_ids

        return await self._run(tx)

    async def reject_batch(self, local_id: int, error_type: str, message: str) -> None:
        """The create was refused for good: the batch's requests become rejects."""

        def tx(c: sqlite3.Connection) -> None:
            _expect(c, local_id, ("intent", "sending"))
            rows = sorted((m[1], m[0], error_type, message) for m in members_of(c, local_id))
            _insert_rejects(c, rows)
            c.execute("UPDATE batches SET state = 'rejected' WHERE local_id = ?", (local_id,))
            c.execute("DELETE FROM batch_requests WHERE local_id = ?", (local_id,))

        await self._run(tx)

    async def release(self, local_id: int) -> None:
        """The create certainly did not happen: spool the requests (same attempt)."""

        def tx(c: sqlite3.Connection) -> None:
            _expect(c, local_id, ("intent", "sending"))
            spool_members(c, local_id, members_of(c, local_id), 0)
            c.execute("DELETE FROM written WHERE local_id = ?", (local_id,))
            drop_batch(c, local_id)

        await self._run(tx)

    async def abandon(self, local_id: int) -> int:
        """The service lost a created batch for good (deleted elsewhere, or past its
        retention) before all its results were written: what it still owed is
        spooled, to be sent again, and the batch is settled. How many were spooled.
        An operator's decision (``pipeline status --abandon``), never automatic: a
        404 can also mean a wrong API key or base URL, and re-sending costs again."""

        def tx(c: sqlite3.Connection) -> int:
            _expect(c, local_id, ("created", "ended"))
            return _settle_batch(c, local_id)

        return await self._run(tx)

    async def record_ended(self, local_id: int) -> None:
        """Processing ended at the service (idempotent)."""

        def tx(c: sqlite3.Connection) -> None:
            state, count = _expect(c, local_id, ("created", "ended", "collected"))
            if state == "created":
                c.execute("UPDATE batches SET state = 'ended' WHERE local_id = ?", (local_id,))
                _bump(c, "ended", count)

        await self._run(tx)

    async def record_output_start(self, local_id: int, offset: int) -> None:
        """The output offset of the batch's first result line (kept if already set)."""
        await self._run(
            lambda c: c.execute(
                "UPDATE batches SET output_start = coalesce(output_start, ?) WHERE local_id = ?",
                (offset, local_id),
            )
        )

    async def commit_results(
        self,
        local_id: int,
        *,
        output: SinkPosition,
        written: int,
        spool: Sequence[str] = (),
        done: bool = False,
        written_ids: Sequence[str] = (),
        durable: bool = False,
        canceled: Sequence[str] = (),
        sinks: Mapping[str, SinkPosition] | None = None,
    ) -> int:
        """The output sink's durable position after ``written`` more lines of this
        batch; ``spool``: custom_ids to re-send (attempt + 1); ``canceled``: held as
        canceled by the job's cancel (``_cancel.hold_canceled``); ``written_ids``
        (optional): the custom_ids of the lines written, so that ``unwritten`` can
        tell a re-download what is left; ``done``: the batch is collected, and what
        it claimed but got no result line for is spooled (their number is returned);
        ``durable``: fsync the commit; ``sinks``: further named sinks' positions."""
        c_written = _encode(list(written_ids)).decode() if written_ids else None

        def tx(c: sqlite3.Connection) -> int:
            _expect(c, local_id, ("created", "ended", "collected"))
            c.execute(
                "UPDATE sinks SET offset = ?, count = ? WHERE name = 'output'",
                (output.offset, output.count),
            )
            if sinks:
                c.executemany(
                    "INSERT INTO sinks VALUES (?, ?, ?) ON CONFLICT(name) DO UPDATE "
                    "SET offset = excluded.offset, count = excluded.count",
                    [(f"route:{name}", p.offset, p.count) for name, p in sinks.items()],
                )
            c.execute(
                "UPDATE batches SET results_written = results_written + ? WHERE local_id = ?",
                (written, local_id),
            )
            _bump(c, "written", written)
            if c_written:  # one row per commit, not one UPDATE per line
                c.execute("INSERT INTO written(local_id, ids) VALUES (?, ?)", (local_id, c_written))
            if spool:
                done_already = done_ids(c, local_id)
                wanted = set(spool) - done_already
                if wanted:
                    members = [m for m in members_of(c, local_id) if m[0] in wanted]
                    spool_members(c, local_id, members, 1)
            if canceled:
                _cancel.hold_canceled(c, local_id, canceled)
            return _settle_batch(c, local_id) if done else 0

        return await self._run(tx, fsync=durable)

    async def unwritten(self, local_id: int, custom_ids: Sequence[str]) -> list[str]:
        """Those of ``custom_ids`` that this batch still owes the output: claimed in
        it, neither committed as written (``written_ids``) nor spooled for
        re-sending. A collected batch owes nothing.

        A re-download asks once per network chunk: the batch's written ids are read
        once and then only the commits made since (``WrittenIds``), not all of them
        again on every call."""

        def tx(c: sqlite3.Connection) -> list[str]:
            row = c.execute("SELECT state FROM batches WHERE local_id = ?", (local_id,)).fetchone()
            if row is None or row[0] == "collected":
                return []
            if self._written is None or self._written.local_id != local_id:
                self._written = WrittenIds(local_id)
            done = self._written.update(c)
            members = self._written.members or set()
            return [cid for cid in custom_ids if cid in members and cid not in done]

        return await self._run(tx)

    # -- sinks, rejects, spool -----------------------------------------------------

    async def commit_rejects(self, position: SinkPosition) -> None:
        """The rejects writer's durable position."""
        await self._run(
            lambda c: c.execute(
                "UPDATE sinks SET offset = ?, count = ? WHERE name = 'rejects'",
                (position.offset, position.count),
            )
        )

    async def rejects_after(self, count: int, limit: int) -> list[Reject]:
        """Recorded rejects from the ``count``-th (0-based) on, at most ``limit``."""

        def tx(c: sqlite3.Connection) -> list[Reject]:
            rows = c.execute(
                "SELECT line, custom_id, type, message FROM rejects WHERE seq > ? "
                "ORDER BY seq LIMIT ?",
                (count, limit),
            )
            return [Reject(row[0], row[1], RejectError(row[2], row[3])) for row in rows]

        return await self._run(tx)

    async def take_spool(self, limit: int, *, after: int = 0) -> list[SpoolItem]:
        """Up to ``limit`` spooled requests, oldest first; they stay spooled until
        claimed. ``after``: the ``seq`` of the last item already taken, to page on."""

        def tx(c: sqlite3.Connection) -> list[SpoolItem]:
            rows = c.execute(
                "SELECT custom_id, line, attempt, offset, length, raw, seq FROM spool "
                "WHERE seq > ? ORDER BY seq LIMIT ?",
                (after, limit),
            )
            return [SpoolItem(*row) for row in rows]

        return await self._run(tx)

    async def requests(self, custom_ids: Sequence[str]) -> list[SpoolItem]:
        """The stored request of each of ``custom_ids`` (see ``Ledger.requests``):
        from the records of the batches in flight (a result is joined with its request
        while its batch is), then the spool and the requests held as canceled. The
        records are decoded once per batch and kept while the batch is in flight."""

        def tx(c: sqlite3.Connection) -> list[SpoolItem]:
            wanted = set(custom_ids)
            items: list[SpoolItem] = []
            for local_id in self._members.in_flight(c):
                found = self._members.get(c, local_id).keys() & wanted
                for cid in found:
                    cid, line, offset, length, attempt, raw = self._members.get(c, local_id)[cid]
                    items.append(SpoolItem(cid, line, attempt, offset, length, raw))
                wanted -= found
                if not wanted:
                    return items
            items += stored_elsewhere(c, wanted)
            return items

        return await self._run(tx)

    async def attempts(self, custom_ids: Sequence[str]) -> dict[str, int]:
        """The attempt number recorded for each custom_id: that of its current
        submission, or for a spooled request, of its next one."""
        index = self._index
        return await self._run(lambda c: attempts_of(c, index, custom_ids))

    async def known_batch_ids(self, batch_ids: Sequence[str]) -> set[str]:
        """Those of ``batch_ids`` that the ledger already holds (for reconciliation)."""
        ids = _encode(list(batch_ids))

        def tx(c: sqlite3.Connection) -> set[str]:
            rows = c.execute(
                "SELECT b.batch_id FROM json_each(?) AS j JOIN batches AS b "
                "ON b.batch_id = j.value",
                (ids,),
            )
            return {row[0] for row in rows}

        return await self._run(tx)

    async def last_line(self) -> int:
        """The highest source line the job holds (see ``Ledger.last_line``), for
        sources that cannot replay their input."""

        def tx(c: sqlite3.Connection) -> int:
            row = c.execute(
                "SELECT max(coalesce((SELECT line FROM checkpoint), 0), "
                "(SELECT value FROM counters WHERE name = 'max_line'), "
                "coalesce((SELECT max(line) FROM rejects), 0))"
            ).fetchone()
            return int(row[0])

        return await self._run(tx)

    async def mark_finished(self) -> None:
        """Every request has its final line in the output: a re-run is a no-op."""
        await self._run(lambda c: c.execute("UPDATE meta SET value = 1 WHERE key = 'finished'"))

    async def status(self) -> JobStatus:
        """Progress counters and the batches in flight."""
        return await self._run(job_status)

    # -- a job's cancel (see ``_cancel``) ------------------------------------------

    async def request_cancel(self) -> None:
        """Record the intent to cancel the job (idempotent; see ``Ledger``)."""
        await self._run(_cancel.request_cancel_tx, fsync=True)

    async def cancel_requested(self) -> bool:
        """Whether a cancel was asked for (by any process) and is not complete."""
        return await self._run(lambda c: cancel_state(c) == "requested")

    async def mark_canceled(self) -> int:
        """The cancel is complete; how many requests are held as canceled."""
        return await self._run(_cancel.mark_canceled, fsync=True)

    async def resume_canceled(self) -> int:
        """Spool the requests held as canceled and clear the cancel; how many."""
        return await self._run(_cancel.resume_canceled)


def _takeover(conn: sqlite3.Connection, state: ResumeState) -> float | None:
    """``ResumeState.takeover_at``: the first open after the last unknown-outcome
    send, recorded in ``meta`` (one autocommit statement) and kept by later opens."""
    sends = [i.sent_at for i in state.pending_intents if i.sent_at is not None]
    if not sends:
        return None
    row = conn.execute("SELECT value FROM meta WHERE key = 'takeover_at'").fetchone()
    if row is not None and float(row[0]) >= max(sends):
        return float(row[0])
    now = time.time()
    conn.execute("INSERT OR REPLACE INTO meta VALUES ('takeover_at', ?)", (now,))
    return now


def _expected_requests(job: JobSpec) -> int:
    """About how many requests the job's input holds (to size the filter of keys
    once, not grow it): its size over a small request's; 0 when unknown."""
    size, _, _ = (job.input_fingerprint or "").partition(":")
    return int(size) // _BYTES_PER_REQUEST_GUESS if size.isdigit() else 0


def _job_change(stored: JobSpec, job: JobSpec) -> str:
    """What differs between the job a state file holds and the one asking, and what to
    do about it, for a person."""
    advice = "give this job its own --output (its state goes next to it), or remove the state"
    if stored.input_path != job.input_path:
        return f"it reads {stored.input_path or 'an iterable'}, not {job.input_path}; {advice}"
    if stored.input_fingerprint != job.input_fingerprint:
        was, _, _ = (stored.input_fingerprint or "").partition(":")
        now, _, _ = (job.input_fingerprint or "").partition(":")
        sizes = (
            f" ({int(was):,} bytes then, {int(now):,} now)"
            if was.isdigit() and now.isdigit()
            else ""
        )
        return (
            f"the input {job.input_path} changed since the job started{sizes}: a state "
            f"file serves its input as it was (its positions point into it); {advice}"
        )
    return (
        f"it writes {stored.output_path} (rejects: {stored.rejects_path}), not "
        f"{job.output_path} (rejects: {job.rejects_path}); {advice}"
    )
