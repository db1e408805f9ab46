"""The embedded ledger: one SQLite file per job.

One connection, used by one task at a time (an ``anyio.Lock``), every call run in
a worker thread (``anyio.to_thread.run_sync``) so the event loop never blocks on
disk. Each protocol method is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``,
rolled back on any error), with rows written by ``executemany`` per batch or per
sink flush, never per request.

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
not a pipeline state, and a state another process holds (an exclusive ``flock`` on
``PATH.lock``, released by the kernel when the holder dies). ``read_status`` reads
a state file without the lock, read-only, while a worker runs.

Memory. Nothing in Python grows with the job: duplicates are found by looking the
claimed custom_ids up in the ``requests`` table (one ``json_each`` join per claim),
counters live in the database, rejects and spool are paged. The page cache is
small (``_CACHE_KIB``): a claim looks up and inserts its custom_ids in key order,
so it walks the index once, left to right, and needs few pages at a time.

Cost per result. ``commit_results`` appends one row per commit (the written
custom_ids as one JSON array, table ``written``), not one UPDATE per line;
``unwritten`` subtracts them from the batch's claimed rows, and they are dropped
when the batch is collected.
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import time
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import anyio
import anyio.to_thread
import msgspec

from .._errors import LedgerError, UsageError
from ..stages._items import Reject, RejectError
from ._base import ClaimResult, SpoolItem
from ._sqlite_schema import (
    APP_TAG,
    NANO_PER_USD,
    SCHEMA,
    SCHEMA_VERSION,
    check_meta,
    connect,
    decode_job,
    job_status,
    meta_value,
    resume_state,
    table_names,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from ..stages._items import Entry
    from ._base import JobSpec, JobStatus, ResumeState, SinkPosition

__all__ = ("SQLiteLedger",)

T = TypeVar("T")

#: Page cache of the connection (bounded: memory stays flat), KiB. Claims walk
#: the custom_id index in key order (each page is loaded once per claim), so a
#: small cache costs little; 32 MiB made the process grow by ~35 MB at 1M requests.
_CACHE_KIB = 4 * 1024
#: Pages of a new state file. Claims of random (UUID-like) custom_ids touch pages
#: all over the index: fewer, larger pages cut the per-page costs (reads, WAL frames,
#: checkpoint copies), about 25% at 1M requests, and the sequential case is not slower.
_PAGE_SIZE = 16384
#: WAL pages before an automatic checkpoint (default 1000: every claim of random
#: ids would checkpoint). A page that later claims dirty again is copied back into
#: the database once per checkpoint, not once per claim; the WAL file on disk grows
#: to about this size (160 MiB) and is reused, the process's memory does not.
_CHECKPOINT_PAGES = 10_000

#: a request's state (see the schema): claimed, spooled or rejected
_SPOOLED = "spooled"
_encode = msgspec.json.encode

_SELECT_KNOWN = (
    "SELECT r.custom_id, json_extract(r.loc, '$[0]'), r.state FROM json_each(?) AS j "
    "JOIN requests AS r ON r.custom_id = j.value"
)
_INSERT_REQUEST = "INSERT INTO requests VALUES (?, ?, ?, ?, ?, 'claimed')"
#: first file-backed rows in one statement: a JSON object {custom_id: [line, offset,
#: length]}, each member inserted as is (no per-field extraction)
_INSERT_REQUESTS_JSON = (
    "INSERT INTO requests SELECT key, value, NULL, 1, ?, 'claimed' FROM json_each(?)"
)
_LINE = "json_extract(loc, '$[0]')"
_DELETE_REQUEST = "DELETE FROM requests WHERE custom_id = ?"
_IN_BATCH = "rowid BETWEEN ? AND ? AND local_id = ? AND state = 'claimed'"
_UNSPOOL = "DELETE FROM spool WHERE custom_id = ?"
#: idempotent: a line read again after a restart is rejected once (``rejects_once``)
_INSERT_REJECT = "INSERT OR IGNORE INTO rejects(line, custom_id, type, message) VALUES (?, ?, ?, ?)"


def _reject_row(r: Reject) -> tuple[int, str | None, str, str]:
    return (r.line, r.custom_id, r.error.type, r.error.message)


class SQLiteLedger:
    """The embedded SQLite ledger of one job (see the module docstring).

    ``SQLiteLedger(path)`` does no I/O; ``await ledger.open(job)`` creates or checks
    the file and takes the exclusive lock; ``await ledger.aclose()`` releases both.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._conn: sqlite3.Connection | None = None
        self._lock_fd: int | None = None
        self._mutex = anyio.Lock()

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
                conn.execute("BEGIN IMMEDIATE")
                try:
                    result = fn(conn)
                except BaseException:
                    conn.rollback()
                    raise
                conn.commit()
            finally:
                if fsync:
                    conn.execute("PRAGMA synchronous = NORMAL")
            return result

        async with self._mutex:
            conn = self._conn
            if conn is None:
                raise UsageError(f"{self!r} is not open")
            return await anyio.to_thread.run_sync(tx, conn)

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
        self._take_lock()
        try:
            conn = connect(self.path, readonly=False)
        except BaseException:
            self._release_lock()
            raise
        try:
            fresh = self._check_or_create(conn, job)
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute(f"PRAGMA cache_size = -{_CACHE_KIB}")
            conn.execute(f"PRAGMA wal_autocheckpoint = {_CHECKPOINT_PAGES}")
            state = resume_state(conn, fresh)
        except sqlite3.DatabaseError as exc:
            conn.close()
            self._release_lock()
            raise self._fail(f"not a usable pipeline state file ({exc})") from exc
        except BaseException:
            conn.close()
            self._release_lock()
            raise
        self._conn = conn
        return state

    def _take_lock(self) -> None:
        lock_path = f"{self.path}.lock"
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise self._fail(f"cannot create lock file {lock_path}: {exc.strerror}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._fail(
                "in use by another process (a worker of this job is running); "
                "stop it first, or use `pipeline status` to watch it"
            ) from None
        self._lock_fd = fd

    def _release_lock(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None

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
        check_meta(conn, tables, str(self.path))
        stored = decode_job(meta_value(conn, "job"))
        if job is not None and stored != job:
            raise self._fail(f"belongs to another job: it holds {stored}, this job is {job}")
        return False

    async def aclose(self) -> None:
        """Close the database and release the lock; idempotent."""
        async with self._mutex:
            conn, self._conn = self._conn, None
            if conn is not None:
                await anyio.to_thread.run_sync(conn.close)
            self._release_lock()

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
        return await self._run(lambda c: _claim(c, entries, rejects, checkpoint, line))

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
            first, last = _rows(c, local_id)
            new_ids, moved = [], 0
            for part in parts:  # the new intents keep the old one's rowid range
                new_id = _new_intent(c, len(part), first, last)
                moved += c.execute(
                    "UPDATE requests SET local_id = ? WHERE custom_id IN "
                    "(SELECT value FROM json_each(?)) AND local_id = ? AND state = 'claimed'",
                    (new_id, _encode(list(part)), local_id),
                ).rowcount
                new_ids.append(new_id)
            if moved != count:
                raise UsageError(
                    f"resplit of batch {local_id} moved {moved} of its {count} requests"
                )
            c.execute("DELETE FROM batches WHERE local_id = ?", (local_id,))
            return new_ids

        return await self._run(tx)

    async def reject_batch(self, local_id: int, error_type: str, message: str) -> None:
        """The create was refused for good: the batch's requests become rejects."""

        def tx(c: sqlite3.Connection) -> None:
            _expect(c, local_id, ("intent", "sending"))
            where = (*_rows(c, local_id), local_id)
            c.execute(
                "INSERT OR IGNORE INTO rejects(line, custom_id, type, message) "
                f"SELECT {_LINE}, custom_id, ?, ? FROM requests WHERE {_IN_BATCH} ORDER BY 1",
                (error_type, message, *where),
            )
            c.execute(f"UPDATE requests SET state = 'rejected' WHERE {_IN_BATCH}", where)
            c.execute("UPDATE batches SET state = 'rejected' WHERE local_id = ?", (local_id,))

        await self._run(tx)

    async def release(self, local_id: int) -> None:
        """The create certainly did not happen: spool the requests (same attempt)."""

        def tx(c: sqlite3.Connection) -> None:
            _expect(c, local_id, ("intent", "sending"))
            where = (*_rows(c, local_id), local_id)
            c.execute(
                "INSERT INTO spool(custom_id) SELECT custom_id FROM requests "
                f"WHERE {_IN_BATCH} ORDER BY {_LINE}",
                where,
            )
            c.execute(f"UPDATE requests SET state = 'spooled' WHERE {_IN_BATCH}", where)
            c.execute("DELETE FROM batches WHERE local_id = ?", (local_id,))

        await self._run(tx)

    async def abandon(self, local_id: int) -> int:
        """The service lost a created batch for good (deleted elsewhere, or past its
        retention) before all its results were written: what it still owed is
        spooled, to be sent again, and the batch is settled. How many were spooled.
        An operator's decision (``pipeline status --abandon``), never automatic: a
        404 can also mean a wrong API key or base URL, and re-sending costs again."""

        def tx(c: sqlite3.Connection) -> int:
            _expect(c, local_id, ("created", "ended"))
            spooled = _spool_missing(c, local_id)
            c.execute("DELETE FROM written WHERE local_id = ?", (local_id,))
            c.execute("UPDATE batches SET state = 'collected' WHERE local_id = ?", (local_id,))
            return spooled

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
    ) -> int:
        """The output sink's durable position after ``written`` more lines of this
        batch; ``spool``: custom_ids to re-send (attempt + 1); ``written_ids``
        (optional): the custom_ids of the lines written, so that ``unwritten`` can
        tell a re-download what is left; ``done``: the batch is collected, and what
        it claimed but got no result line for is spooled (their number is returned);
        ``durable``: fsync the commit."""
        c_spool = _encode(list(spool)) if spool else None
        c_written = _encode(list(written_ids)).decode() if written_ids else None

        def tx(c: sqlite3.Connection) -> int:
            _expect(c, local_id, ("created", "ended", "collected"))
            c.execute(
                "UPDATE sinks SET offset = ?, count = ? WHERE name = 'output'",
                (output.offset, output.count),
            )
            c.execute(
                "UPDATE batches SET results_written = results_written + ? WHERE local_id = ?",
                (written, local_id),
            )
            _bump(c, "written", written)
            if c_written:  # one row per commit, not one UPDATE per line
                c.execute("INSERT INTO written(local_id, ids) VALUES (?, ?)", (local_id, c_written))
            if c_spool:
                c.execute(
                    "INSERT OR IGNORE INTO spool(custom_id) SELECT custom_id FROM requests "
                    "WHERE custom_id IN (SELECT value FROM json_each(?)) AND local_id = ? "
                    "AND state = 'claimed'",
                    (c_spool, local_id),
                )
                c.execute(
                    "UPDATE requests SET state = 'spooled', attempt = attempt + 1 WHERE custom_id "
                    "IN (SELECT value FROM json_each(?)) AND local_id = ? AND state = 'claimed'",
                    (c_spool, local_id),
                )
            missing = 0
            if done:
                missing = _spool_missing(c, local_id)
                # collected: nothing of it can be owed any more
                c.execute("DELETE FROM written WHERE local_id = ?", (local_id,))
                c.execute("UPDATE batches SET state = 'collected' WHERE local_id = ?", (local_id,))
            return missing

        return await self._run(tx, fsync=durable)

    async def unwritten(self, local_id: int, custom_ids: Sequence[str]) -> list[str]:
        """Those of ``custom_ids`` that this batch still owes the output: claimed in
        it, neither committed as written (``written_ids``) nor spooled for
        re-sending. A collected batch owes nothing."""
        ids = _encode(list(custom_ids))

        def tx(c: sqlite3.Connection) -> list[str]:
            row = c.execute("SELECT state FROM batches WHERE local_id = ?", (local_id,)).fetchone()
            if row is None or row[0] == "collected":
                return []
            owed = {
                row[0]
                for row in c.execute(
                    "SELECT r.custom_id FROM json_each(?) AS j JOIN requests AS r "
                    "ON r.custom_id = j.value WHERE r.local_id = ? AND r.state = 'claimed'",
                    (ids, local_id),
                )
            }
            if owed:  # minus the batch's written ids (bounded by the batch's size)
                owed.difference_update(
                    row[0]
                    for row in c.execute(
                        "SELECT j.value FROM written AS w, json_each(w.ids) AS j "
                        "WHERE w.local_id = ?",
                        (local_id,),
                    )
                )
            return [cid for cid in custom_ids if cid in owed]

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
                "SELECT r.custom_id, r.loc, r.attempt, r.raw, s.seq "
                "FROM spool AS s JOIN requests AS r ON r.custom_id = s.custom_id "
                "WHERE s.seq > ? ORDER BY s.seq LIMIT ?",
                (after, limit),
            )
            items = []
            for cid, loc, attempt, raw, seq in rows:
                line, offset, length = _decode_loc(loc)
                items.append(SpoolItem(cid, line, attempt, offset, length, raw, seq))
            return items

        return await self._run(tx)

    async def attempts(self, custom_ids: Sequence[str]) -> dict[str, int]:
        """The attempt number recorded for each custom_id: that of its current
        submission, or for a spooled request, of its next one."""
        ids = _encode(list(custom_ids))

        def tx(c: sqlite3.Connection) -> dict[str, int]:
            rows = c.execute(
                "SELECT r.custom_id, r.attempt FROM json_each(?) AS j "
                "JOIN requests AS r ON r.custom_id = j.value",
                (ids,),
            )
            return dict(rows.fetchall())

        return await self._run(tx)

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

    async def mark_finished(self) -> None:
        """Every request has its final line in the output: a re-run is a no-op."""
        await self._run(lambda c: c.execute("UPDATE meta SET value = 1 WHERE key = 'finished'"))

    async def status(self) -> JobStatus:
        """Progress counters and the batches in flight."""
        return await self._run(job_status)


# -- transactions (run in the worker thread) -----------------------------------------


def _claim(
    c: sqlite3.Connection,
    entries: Sequence[Entry],
    rejects: Sequence[Reject],
    checkpoint: int,
    line: int,
) -> ClaimResult:
    # One lookup of every claimed custom_id; the dict holds one claim, not the job.
    # in key order: the lookups walk the custom_id B-tree once, left to right
    in_input_order = [e.custom_id for e in entries]
    ids = sorted(in_input_order)
    in_key_order = ids == in_input_order  # e.g. numbered ids: no sort needed below
    known = {row[0]: (row[1], row[2]) for row in c.execute(_SELECT_KNOWN, (_encode(ids),))}
    seen: dict[str, int] = {}
    fresh: list[Entry] = []
    retries: list[Entry] = []
    duplicates: list[int] = []
    skipped: list[int] = []
    dup_rows: list[tuple[int, str | None, str, str]] = []
    if not known and len(set(ids)) == len(ids):
        fresh = list(entries)  # the common case: all new, no need to look at each
        entries = ()
    for i, e in enumerate(entries):
        cid = e.custom_id
        prev = known.get(cid)
        first = seen.get(cid)
        if first is None and prev is not None and prev[0] == e.line:
            if prev[1] == _SPOOLED:
                retries.append(e)  # this request's own retry, back from the spool
            else:  # its line, read again after a restart: accounted for already
                skipped.append(i)
                continue
        elif first is None and prev is None:
            fresh.append(e)
        else:
            duplicates.append(i)
            used = first if first is not None else prev[0] if prev is not None else 0
            msg = f"custom_id {cid!r} already used on line {used}"
            dup_rows.append((e.line, cid, "invalid_request_error", msg))
            continue
        seen[cid] = e.line
    added = _insert_rejects(c, [_reject_row(r) for r in rejects])
    local_id = 0
    if fresh or retries:
        if retries:  # a retry's row is inserted anew, next to its batch's other rows
            c.executemany(_DELETE_REQUEST, [(e.custom_id,) for e in retries])
            c.executemany(_UNSPOOL, [(e.custom_id,) for e in retries])
        local_id = _new_intent(c, len(fresh) + len(retries), 0, -1)
        cost = sum([e.cost_usd for e in fresh]) + sum([e.cost_usd for e in retries])
        _bump(c, "estimated_nano_usd", round(cost * NANO_PER_USD))
        first = _max_row(c) + 1
        _insert_requests(c, fresh + retries, local_id, in_key_order=in_key_order)
        c.execute(
            "UPDATE batches SET first_row = ?, last_row = ? WHERE local_id = ?",
            (first, _max_row(c), local_id),
        )
    added += _insert_rejects(c, dup_rows)
    _move_checkpoint(c, checkpoint, line)
    return ClaimResult(local_id, duplicates, skipped, added)


def _spool_missing(c: sqlite3.Connection, local_id: int) -> int:
    """Spool the requests a collected batch claimed but wrote no line for; how many.

    Written requests stay ``claimed``, so the batch misses nothing exactly when its
    claimed rows are as many as the lines it wrote: one range count in the common
    case, the set difference only when something is missing."""
    where = (*_rows(c, local_id), local_id)
    claimed = c.execute(f"SELECT count(*) FROM requests WHERE {_IN_BATCH}", where).fetchone()[0]
    row = c.execute("SELECT results_written FROM batches WHERE local_id = ?", (local_id,))
    if claimed <= row.fetchone()[0]:
        return 0
    written = {
        row[0]
        for row in c.execute(
            "SELECT j.value FROM written AS w, json_each(w.ids) AS j WHERE w.local_id = ?",
            (local_id,),
        )
    }
    ids = [
        (cid,)
        for (cid,) in c.execute(f"SELECT custom_id FROM requests WHERE {_IN_BATCH}", where)
        if cid not in written
    ]
    c.executemany("INSERT OR IGNORE INTO spool(custom_id) VALUES (?)", ids)
    c.executemany(
        "UPDATE requests SET state = 'spooled', attempt = attempt + 1 WHERE custom_id = ?", ids
    )
    return len(ids)


def _insert_rejects(c: sqlite3.Connection, rows: list[tuple[int, str | None, str, str]]) -> int:
    """Insert reject rows; how many were new (``rejects_once`` ignores the rest)."""
    return c.executemany(_INSERT_REJECT, rows).rowcount if rows else 0


def _insert_requests(
    c: sqlite3.Connection, entries: list[Entry], local_id: int, *, in_key_order: bool = False
) -> None:
    """First attempts of file-backed entries as one JSON object (parsed by SQLite, no
    per-row binding), the others (retries, rows that carry their bytes) by
    ``executemany``. Rows go in by custom_id, so the index inserts walk the B-tree once,
    in order (``in_key_order``: the entries are in that order already)."""
    if in_key_order:
        fresh = {
            e.custom_id: (e.line, e.offset, e.end - e.offset)
            for e in entries
            if e.attempt == 1 and e.end > e.offset >= 0
        }
    else:
        pairs = [
            (e.custom_id, (e.line, e.offset, e.end - e.offset))
            for e in entries
            if e.attempt == 1 and e.end > e.offset >= 0
        ]
        pairs.sort()
        fresh = dict(pairs)
    if fresh:
        c.execute(_INSERT_REQUESTS_JSON, (local_id, _encode(fresh)))
    if len(fresh) < len(entries):
        other = [
            (e.custom_id, _encode(_loc(e)), None if e.end > e.offset >= 0 else e.raw, e.attempt)
            for e in entries
            if not (e.attempt == 1 and e.end > e.offset >= 0)
        ]
        other.sort()
        c.executemany(_INSERT_REQUEST, [(*row, local_id) for row in other])


def _loc(e: Entry) -> tuple[int, int, int]:
    if e.offset >= 0 and e.end > e.offset:
        return (e.line, e.offset, e.end - e.offset)
    return (e.line, e.offset, len(e.raw))


_decode_loc = msgspec.json.Decoder(tuple[int, int, int]).decode


def _max_row(c: sqlite3.Connection) -> int:
    row = c.execute("SELECT max(rowid) FROM requests").fetchone()
    return int(row[0] or 0)


def _rows(c: sqlite3.Connection, local_id: int) -> tuple[int, int]:
    """The rowid range of the batch's requests."""
    first, last = c.execute(
        "SELECT first_row, last_row FROM batches WHERE local_id = ?", (local_id,)
    ).fetchone()
    return int(first), int(last)


def _new_intent(c: sqlite3.Connection, count: int, first: int, last: int) -> int:
    cur = c.execute(
        "INSERT INTO batches(state, request_count, first_row, last_row) VALUES ('intent', ?, ?, ?)",
        (count, first, last),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def _move_checkpoint(c: sqlite3.Connection, checkpoint: int, line: int) -> None:
    c.execute(
        "UPDATE checkpoint SET offset = max(offset, ?), line = max(line, ?)",
        (checkpoint, line),
    )


def _bump(c: sqlite3.Connection, name: str, by: int) -> None:
    c.execute("UPDATE counters SET value = value + ? WHERE name = ?", (by, name))


def _expect(c: sqlite3.Connection, local_id: int, states: Sequence[str]) -> tuple[str, int]:
    row = c.execute(
        "SELECT state, request_count FROM batches WHERE local_id = ?", (local_id,)
    ).fetchone()
    if row is None:
        raise UsageError(f"no batch with local id {local_id} in the ledger")
    if row[0] not in states:
        raise UsageError(f"batch {local_id} is {row[0]}, expected one of {', '.join(states)}")
    return row[0], row[1]
