"""The bodies of the SQLite ledger's transactions, and the SQL they share with its
methods: plain functions of the connection, run in the worker thread inside the
one transaction that ``SQLiteLedger._run`` opens (they never begin, commit or roll
back one themselves).

The claim is the one that costs: it looks every claimed custom_id up in one
``json_each`` join and inserts the new rows as one JSON object, both in key order,
so it walks the custom_id index once, left to right (see "Memory" in ``_sqlite``).
"""

from __future__ import annotations

import sqlite3
from typing import TYPE_CHECKING

import msgspec

from .._errors import UsageError
from .._pricing import whole_units
from ._base import ClaimResult
from ._sqlite_schema import NANO_PER_USD

if TYPE_CHECKING:
    from collections.abc import Sequence

    from ..stages._items import Entry, Reject

#: a request's state (see the schema): claimed, spooled or rejected
_SPOOLED = "spooled"
_encode = msgspec.json.encode

_SELECT_KNOWN = (
    "SELECT r.custom_id, json_extract(r.loc, '$[0]'), r.state FROM json_each(?) AS j "
    "JOIN requests AS r ON r.custom_id = j.value"
)
_INSERT_REQUEST = "INSERT INTO requests VALUES (?, ?, ?, ?, ?, 'claimed')"
#: first file-backed rows in one statement: a JSON object {custom_id: [line, offset,
#: length]}, each member inserted as is (no per-field extraction). ``OR IGNORE``: a
#: multi-row insert that may abort on a conflict makes SQLite keep a statement journal
#: (a copy of every page it changes, spilled to a temp file: 34 MB per 100k requests,
#: and a quarter of a claim's cost with random custom_ids). The claim has looked every
#: id up first, so no conflict can happen; it checks the count inserted instead.
_INSERT_REQUESTS_JSON = (
    "INSERT OR IGNORE INTO requests SELECT key, value, NULL, 1, ?, 'claimed' FROM json_each(?)"
)
_LINE = "json_extract(loc, '$[0]')"
_DELETE_REQUEST = "DELETE FROM requests WHERE custom_id = ?"
_IN_BATCH = "rowid BETWEEN ? AND ? AND local_id = ? AND state = 'claimed'"
_UNSPOOL = "DELETE FROM spool WHERE custom_id = ?"
#: idempotent: a line read again after a restart is rejected once (``rejects_once``)
_INSERT_REJECT = "INSERT OR IGNORE INTO rejects(line, custom_id, type, message) VALUES (?, ?, ?, ?)"


def _reject_row(r: Reject) -> tuple[int, str | None, str, str]:
    return (r.line, r.custom_id, r.error.type, r.error.message)


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
        _bump(c, "estimated_nano_usd", whole_units(cost, NANO_PER_USD))  # never overflows
        first = _max_row(c) + 1
        _insert_requests(c, fresh + retries, local_id, in_key_order=in_key_order)
        c.execute(
            "UPDATE batches SET first_row = ?, last_row = ? WHERE local_id = ?",
            (first, _max_row(c), local_id),
        )
    added += _insert_rejects(c, dup_rows)
    _move_checkpoint(c, checkpoint, line)
    return ClaimResult(local_id, duplicates, skipped, added)


def _settle_batch(c: sqlite3.Connection, local_id: int) -> int:
    """Mark the batch collected: nothing of it can be owed any more. What it claimed
    but wrote no line for is spooled first; how many."""
    missing = _spool_missing(c, local_id)
    c.execute("DELETE FROM written WHERE local_id = ?", (local_id,))
    c.execute("UPDATE batches SET state = 'collected' WHERE local_id = ?", (local_id,))
    return missing


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
    fresh = {
        e.custom_id: (e.line, e.offset, e.end - e.offset)
        for e in entries
        if e.attempt == 1 and e.end > e.offset >= 0
    }
    if not in_key_order:
        fresh = dict(sorted(fresh.items()))
    if fresh:
        inserted = c.execute(_INSERT_REQUESTS_JSON, (local_id, _encode(fresh))).rowcount
        if inserted != len(fresh):
            # what the plain INSERT raised before it ignored conflicts; rolls the claim back
            raise sqlite3.IntegrityError(
                f"UNIQUE constraint failed: requests.custom_id (the claim inserted "
                f"{inserted} of {len(fresh)} new requests)"
            )
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


class WrittenIds:
    """One batch's written custom_ids, as read up to ``written`` row ``seq``: kept
    for a batch being downloaded again, so each ``unwritten`` call reads only the
    commits made since the last one. A batch's rows leave ``written`` only when it
    is collected, and new rows get a higher ``seq`` than any of its own."""

    __slots__ = ("ids", "local_id", "seq")

    def __init__(self, local_id: int) -> None:
        self.local_id = local_id
        self.ids: set[str] = set()
        self.seq = 0

    def update(self, c: sqlite3.Connection) -> set[str]:
        """The ids, with the rows committed since the last call added."""
        for seq, value in c.execute(
            "SELECT w.seq, j.value FROM written AS w, json_each(w.ids) AS j "
            "WHERE w.local_id = ? AND w.seq > ?",
            (self.local_id, self.seq),
        ):
            self.ids.add(value)
            self.seq = max(self.seq, seq)
        return self.ids
