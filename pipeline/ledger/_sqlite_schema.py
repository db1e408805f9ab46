"""The SQLite ledger's tables, and reading them: opening checks, resume state,
status (also read-only, without the job's lock, for ``pipeline status``)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread
import msgspec

from .._errors import LedgerError
from ._base import BatchRecord, JobSpec, JobStatus, ResumeState, SinkPosition
from ._files import ledger_error, lock_held, transaction
from ._sqlite_ids import DEFERRED_SCHEMA, IDRUNS_SCHEMA, IDS_SCHEMA, IDS_TABLES

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from ._base import CancelState

__all__ = (
    "APP_TAG",
    "CANCEL_KEY",
    "SCHEMA",
    "SCHEMA_VERSION",
    "TABLES",
    "UPGRADABLE_VERSION",
    "cancel_state",
    "check_meta",
    "connect",
    "decode_job",
    "job_status",
    "meta_value",
    "read_status",
    "resume_state",
    "table_names",
    "upgrade",
)

#: Bumped on any incompatible change of the tables below. Version 3 holds the
#: requests per batch, not per row, and the custom_ids as keys in sorted runs;
#: version 4 adds ``idruns`` and ``idlate`` (the ids themselves while they go up), keeps
#: a batch's requests in ``batch_requests`` (not in its row), and writes a
#: batch's record as columns; version 5 adds ``idclaims`` (the keys of ids in any
#: order, a row per claim: no sorted runs any more, those of a version-4 file are read
#: as they are, never merged) and ``deferred`` (requests whose id the filter could not
#: rule out, resolved later in bulk). Files of versions 3 and 4 are upgraded when a
#: worker opens them (``upgrade``: tables added), and read as they are.
SCHEMA_VERSION = 5
#: the oldest version ``upgrade`` takes
UPGRADABLE_VERSION = 3
#: the estimated spend is kept as an integer number of billionths of a dollar
NANO_PER_USD = 1_000_000_000
APP_TAG = "pipeline-ledger"
#: The ``meta`` row of a job's cancel (absent: none): "requested", then "canceled".
#: A row, not a table, so state files made before cancel existed read as they are.
CANCEL_KEY = "cancel"

_BATCH_REQUESTS = "CREATE TABLE batch_requests(local_id INTEGER PRIMARY KEY, reqs BLOB NOT NULL);"

SCHEMA = (
    """
CREATE TABLE meta(key TEXT PRIMARY KEY, value BLOB NOT NULL);
-- spooled: its requests sent back to the spool (``written`` rows with spooled = 1
-- name them).
CREATE TABLE batches(
    local_id INTEGER PRIMARY KEY AUTOINCREMENT,
    batch_id TEXT UNIQUE,
    state TEXT NOT NULL,
    request_count INTEGER NOT NULL,
    body_bytes INTEGER NOT NULL DEFAULT 0,
    sent_at REAL,
    output_start INTEGER,
    results_written INTEGER NOT NULL DEFAULT 0,
    spooled INTEGER NOT NULL DEFAULT 0
);
-- While a batch is in flight, its requests as one record (``_sqlite_tx.Columns`` in
-- msgpack: custom_ids, lines, offsets, lengths, attempts, and raw bytes only without
-- a source file), dropped once it is collected or rejected (its ids stay held, see
-- _sqlite_ids). A table of its own: the batch's row changes at every step of its
-- life, and a row holding the record (a few hundred KB) was written again each time.
"""
    + _BATCH_REQUESTS
    + """
-- The custom_ids a batch has written to the output (spooled = 0) or sent back to the
-- spool (spooled = 1), one JSON array per ``commit_results``; dropped when the batch
-- is collected (so bounded by the batches in flight).
CREATE TABLE written(seq INTEGER PRIMARY KEY, local_id INTEGER NOT NULL, ids TEXT NOT NULL,
                     spooled INTEGER NOT NULL DEFAULT 0);
CREATE INDEX written_batch ON written(local_id);
CREATE TABLE rejects(
    seq INTEGER PRIMARY KEY,
    line INTEGER NOT NULL,
    custom_id TEXT,
    type TEXT NOT NULL,
    message TEXT NOT NULL
);
-- A source line read again after a restart is rejected once, not twice.
CREATE UNIQUE INDEX rejects_once ON rejects(line, coalesce(custom_id, ''), type, message);
CREATE TABLE sinks(name TEXT PRIMARY KEY, offset INTEGER NOT NULL, count INTEGER NOT NULL);
-- Requests waiting to be sent again, with all it takes to read them back; (h, c):
-- the custom_id's key (_sqlite_ids). attempt: that of the next submission.
CREATE TABLE spool(seq INTEGER PRIMARY KEY AUTOINCREMENT, h INTEGER NOT NULL,
                   c INTEGER NOT NULL, custom_id TEXT NOT NULL, line INTEGER NOT NULL,
                   offset INTEGER NOT NULL, length INTEGER NOT NULL, raw BLOB,
                   attempt INTEGER NOT NULL, UNIQUE (h, c));
-- Requests whose result the job's cancel canceled: held, neither written nor
-- spooled, until ``resume_canceled`` spools them (same attempt).
CREATE TABLE canceled(h INTEGER NOT NULL, c INTEGER NOT NULL, custom_id TEXT NOT NULL,
                      line INTEGER NOT NULL, offset INTEGER NOT NULL, length INTEGER NOT NULL,
                      raw BLOB, attempt INTEGER NOT NULL, PRIMARY KEY (h, c));
-- The attempt of requests submitted more than once (the others: 1).
CREATE TABLE retried(h INTEGER NOT NULL, c INTEGER NOT NULL, attempt INTEGER NOT NULL,
                     PRIMARY KEY (h, c)) WITHOUT ROWID;
CREATE TABLE checkpoint(id INTEGER PRIMARY KEY CHECK (id = 0), offset INTEGER NOT NULL,
                        line INTEGER NOT NULL);
CREATE TABLE counters(name TEXT PRIMARY KEY, value INTEGER NOT NULL);
INSERT INTO checkpoint VALUES (0, 0, 0);
-- estimated_nano_usd: the spend guard's estimate of every request claimed, in
-- billionths of a dollar (a budget holds for the job, across runs); max_line: the
-- highest source line ever claimed
INSERT INTO counters VALUES ('submitted', 0), ('ended', 0), ('written', 0),
                            ('estimated_nano_usd', 0), ('max_line', 0);
INSERT INTO sinks VALUES ('output', 0, 0), ('rejects', 0, 0);
"""
    + IDS_SCHEMA
    + IDRUNS_SCHEMA
    + DEFERRED_SCHEMA
)
TABLES = frozenset(
    {
        "meta",
        "batches",
        "batch_requests",
        "written",
        "rejects",
        "sinks",
        "spool",
        "retried",
        "canceled",
        "checkpoint",
        "counters",
        "runs",
        "idruns",
        "idlate",
        "idclaims",
        "deferred",
        *IDS_TABLES,
    }
)
#: the tables of a version-4 file, and of a version-3 one
_TABLES_4 = TABLES - {"idclaims", "deferred"}
_TABLES_3 = _TABLES_4 - {"idruns", "idlate", "batch_requests"}

_IN_FLIGHT = ("intent", "sending", "created", "ended")
_BATCH_COLUMNS = (
    "local_id, batch_id, state, request_count, body_bytes, sent_at, output_start, results_written"
)

decode_job = msgspec.json.Decoder(JobSpec).decode


def _batch(row: Sequence[Any]) -> BatchRecord:
    return BatchRecord(
        local_id=row[0],
        batch_id=row[1],
        state=row[2],
        request_count=row[3],
        body_bytes=row[4],
        sent_at=row[5],
        output_start=row[6],
        results_written=row[7],
    )


def _batches(c: sqlite3.Connection, states: Sequence[str]) -> list[BatchRecord]:
    marks = ", ".join("?" * len(states))
    rows = c.execute(
        f"SELECT {_BATCH_COLUMNS} FROM batches WHERE state IN ({marks}) ORDER BY local_id",
        tuple(states),
    )
    return [_batch(row) for row in rows]


def _scalar(c: sqlite3.Connection, sql: str) -> Any:
    return c.execute(sql).fetchone()[0]


def resume_state(c: sqlite3.Connection, fresh: bool) -> ResumeState:
    offset, line = c.execute("SELECT offset, line FROM checkpoint").fetchone()
    sinks = {row[0]: SinkPosition(row[1], row[2]) for row in c.execute("SELECT * FROM sinks")}
    return ResumeState(
        fresh=fresh,
        finished=bool(meta_value(c, "finished")),
        source_offset=offset,
        source_line=line,
        output=sinks["output"],
        rejects=sinks["rejects"],
        batches=_batches(c, ("created", "ended")),
        pending_intents=_batches(c, ("intent", "sending")),
        spooled=_scalar(c, "SELECT count(*) FROM spool"),
        deferred=_deferred_count(c),
        estimated_cost_usd=_estimated_usd(c),
        cancel=cancel_state(c),
        canceled=_canceled_count(c),
        sinks={
            name.removeprefix("route:"): p for name, p in sinks.items() if name.startswith("route:")
        },
    )


def _deferred_count(c: sqlite3.Connection) -> int:
    """Requests whose custom_id waits to be resolved (a file of an older version,
    read before its upgrade, has none)."""
    if "deferred" not in table_names(c):
        return 0
    return int(_scalar(c, "SELECT count(*) FROM deferred"))


def cancel_state(c: sqlite3.Connection) -> CancelState | None:
    """The job's cancel, from its ``meta`` row (None: no cancel)."""
    row = c.execute("SELECT value FROM meta WHERE key = ?", (CANCEL_KEY,)).fetchone()
    return None if row is None else row[0]  # type: ignore[no-any-return]


def _canceled_count(c: sqlite3.Connection) -> int:
    """Requests held as canceled (a scan, so only for a job that has a cancel)."""
    if cancel_state(c) is None:
        return 0
    return int(_scalar(c, "SELECT count(*) FROM canceled"))


def _estimated_usd(c: sqlite3.Connection) -> float:
    nano = _scalar(c, "SELECT value FROM counters WHERE name = 'estimated_nano_usd'")
    return float(nano) / NANO_PER_USD


def job_status(c: sqlite3.Connection) -> JobStatus:
    counters = dict(c.execute("SELECT name, value FROM counters").fetchall())
    return JobStatus(
        read=_scalar(c, "SELECT line FROM checkpoint"),
        rejected=_scalar(c, "SELECT coalesce(max(seq), 0) FROM rejects"),
        submitted=counters["submitted"],
        ended=counters["ended"],
        written=counters["written"],
        spooled=_scalar(c, "SELECT count(*) FROM spool") + _deferred_count(c),
        finished=bool(meta_value(c, "finished")),
        batches=_batches(c, _IN_FLIGHT),
        job=decode_job(meta_value(c, "job")),
        rejects_written=_scalar(c, "SELECT count FROM sinks WHERE name = 'rejects'"),
        source_offset=_scalar(c, "SELECT offset FROM checkpoint"),
        output=SinkPosition(
            *c.execute("SELECT offset, count FROM sinks WHERE name = 'output'").fetchone()
        ),
        estimated_cost_usd=_estimated_usd(c),
        cancel=cancel_state(c),
        canceled=_canceled_count(c),
    )


# -- files ---------------------------------------------------------------------------


def connect(path: Path, *, readonly: bool) -> sqlite3.Connection:
    try:
        if readonly:
            uri = f"{path.absolute().as_uri()}?mode=ro"
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)
        else:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            # Some builds of SQLite (Debian's, so most Linux Pythons) zero every deleted
            # row's bytes by default: each collected batch's record and its written
            # ids were written to the WAL a second time, as zeros (twice the frames of
            # ``commit_results``, RESULTS.md). FAST purges deleted content from the
            # pages written anyway and writes no page for it.
            conn.execute("PRAGMA secure_delete = FAST")
    except sqlite3.Error as exc:
        raise LedgerError(str(path), f"cannot open: {exc}") from exc
    return conn


def table_names(c: sqlite3.Connection) -> set[str]:
    rows = c.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
    return {row[0] for row in rows} - {"sqlite_sequence"}


def meta_value(c: sqlite3.Connection, key: str) -> Any:
    row = c.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    if row is None:
        raise sqlite3.DatabaseError(f"meta entry {key!r} is missing")
    return row[0]


_NOT_STATE = (
    "is an SQLite database but not a pipeline state file; give --state the job's state "
    "file, or a new path for a new job"
)


def check_meta(c: sqlite3.Connection, tables: set[str], path: str) -> int:
    """Check that ``c`` is a state file this pipeline reads; its schema version
    (``SCHEMA_VERSION``, or ``UPGRADABLE_VERSION``: see ``upgrade``)."""
    if "meta" not in tables:
        raise LedgerError(path, _NOT_STATE)
    app = c.execute("SELECT value FROM meta WHERE key = 'app'").fetchone()
    if app is None or app[0] != APP_TAG:
        raise LedgerError(path, _NOT_STATE)
    version = meta_value(c, "schema_version")
    if version not in (SCHEMA_VERSION, 4, UPGRADABLE_VERSION):
        raise LedgerError(
            path,
            f"has schema version {version}; this pipeline reads versions "
            f"{UPGRADABLE_VERSION} to {SCHEMA_VERSION}: "
            "finish the job with the pipeline release that started it, or remove the "
            "state file to start the job over",
        )
    expected = {SCHEMA_VERSION: TABLES, 4: _TABLES_4}.get(version, _TABLES_3)
    if tables != expected:
        missing = ", ".join(sorted(expected - tables)) or "none"
        raise LedgerError(
            path,
            f"is damaged: tables missing: {missing}; restore it from a backup, or remove "
            "it (and its -wal file) to start the job over",
        )
    return int(version)


def upgrade(c: sqlite3.Connection, version: int) -> None:
    """Bring a state file of version 3 or 4 to ``SCHEMA_VERSION``, in one transaction.
    From 3: ``idruns`` and ``idlate`` are added, the batches' records move to
    ``batch_requests``, and the note of the greatest id dropped, so that the index
    takes the ids held as keys (its filter is built at open); batch records of
    version 3 are read as they are. From 4 (and 3): ``idclaims`` and ``deferred`` are
    added; the runs of keys stay, read as they are."""
    if version == SCHEMA_VERSION:
        return
    with transaction(c):
        if version == UPGRADABLE_VERSION:
            for statement in IDRUNS_SCHEMA.split(";")[:-1]:
                c.execute(statement)
            c.execute(_BATCH_REQUESTS)
            c.execute(
                "INSERT INTO batch_requests SELECT local_id, reqs FROM batches "
                "WHERE reqs IS NOT NULL"
            )
            c.execute("ALTER TABLE batches DROP COLUMN reqs")
            c.execute("DELETE FROM meta WHERE key = 'ids_top'")
        for statement in DEFERRED_SCHEMA.split(";")[:-1]:
            c.execute(statement)
        c.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (SCHEMA_VERSION,))


def _read_status_sync(path: Path) -> JobStatus:
    if not path.is_file():
        raise LedgerError(str(path), "does not exist")
    conn = connect(path, readonly=True)
    try:
        check_meta(conn, table_names(conn), str(path))
        conn.execute("BEGIN")  # one consistent snapshot
        status = job_status(conn)
        conn.execute("COMMIT")
    except sqlite3.Error as exc:
        raise ledger_error(path, exc, opening=True) from exc
    finally:
        conn.close()
    status.worker_running = lock_held(path)
    return status


async def read_status(path: str | os.PathLike[str]) -> JobStatus:
    """The progress of the job in the state file at ``path``, read-only and without
    the job's lock, so it works while a worker runs."""
    return await anyio.to_thread.run_sync(_read_status_sync, Path(path))
