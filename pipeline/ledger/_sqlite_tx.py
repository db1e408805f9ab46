"""The bodies of the SQLite ledger's transactions, and the SQL they share with its
methods: plain functions of the connection, run in the worker thread inside the
one transaction that ``SQLiteLedger._run`` opens (they never begin, commit or roll
back one themselves).

A batch's requests are one record (``batches.reqs``, a msgpack array of
``[custom_id, line, offset, length, attempt, raw]``) while it is in flight, and its
custom_ids are keys in the runs of ``_sqlite_ids`` for the rest of the job: a claim
writes one row for the batch and one sorted run of keys, whatever the ids look like.
"""

from __future__ import annotations

from operator import attrgetter, itemgetter
from typing import TYPE_CHECKING

import msgspec

from .._errors import UsageError
from .._pricing import whole_units
from ._base import ClaimResult, SpoolItem
from ._sqlite_ids import key_of, keys_of
from ._sqlite_schema import NANO_PER_USD

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable, Sequence

    from ..stages._items import Entry, Reject
    from ._sqlite_ids import IdIndex

#: one request of a batch: custom_id, line, offset, length, attempt, raw (None when
#: it is read back from the source file at offset, length)
Member = tuple[str, int, int, int, int, bytes | None]

_encode = msgspec.json.encode
_attempt = attrgetter("attempt")
_cost = attrgetter("cost_usd")
_line = itemgetter(1)
_pack = msgspec.msgpack.Encoder().encode
_unpack = msgspec.msgpack.Decoder(list[tuple[str, int, int, int, int, bytes | None]]).decode

#: idempotent: a line read again after a restart is rejected once (``rejects_once``)
_INSERT_REJECT = "INSERT OR IGNORE INTO rejects(line, custom_id, type, message) VALUES (?, ?, ?, ?)"
_SPOOL = (
    "INSERT OR IGNORE INTO spool(h, c, custom_id, line, offset, length, raw, attempt) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _reject_row(r: Reject) -> tuple[int, str | None, str, str]:
    return (r.line, r.custom_id, r.error.type, r.error.message)


def member(e: Entry) -> Member:
    """The batch record of one claimed entry."""
    if e.end > e.offset >= 0:
        return (e.custom_id, e.line, e.offset, e.end - e.offset, e.attempt, None)
    return (e.custom_id, e.line, e.offset, len(e.raw), e.attempt, e.raw)


def _claim(
    c: sqlite3.Connection,
    index: IdIndex,
    entries: Sequence[Entry],
    rejects: Sequence[Reject],
    checkpoint: int,
    line: int,
) -> ClaimResult:
    ids = [e.custom_id for e in entries]
    keys = keys_of(ids)
    distinct = len(set(ids)) == len(ids)
    # the first line of each key the job holds already (only ids not above all those
    # held, or the few the filter does not rule out, are looked up)
    known = index.lookup(c, ids, keys)
    spooled: set[tuple[int, int]] = set()
    if known:
        rows = c.execute(
            "SELECT s.h, s.c FROM json_each(?) AS j CROSS JOIN spool AS s ON s.h = j.value",
            (_encode(sorted({h for h, _ in known})),),
        )
        spooled = set(rows.fetchall()) & known.keys()
    members: list[Member] = []
    fresh_h: list[int] = []
    fresh_cl: list[int] = []
    retried: list[tuple[int, int]] = []
    duplicates: list[int] = []
    skipped: list[int] = []
    dup_rows: list[tuple[int, str | None, str, str]] = []
    if not known and distinct:
        # the common case: all new, no need to look at each
        members = [
            (e.custom_id, e.line, e.offset, e.end - e.offset, e.attempt, None)
            if e.end > e.offset >= 0
            else member(e)
            for e in entries
        ]
        fresh_h = [k[0] for k in keys]
        fresh_cl = [k[1] << 32 | e.line for k, e in zip(keys, entries, strict=True)]
    else:
        seen: dict[str, int] = {}
        for i, e in enumerate(entries):
            cid = e.custom_id
            k = keys[i]
            prev = known.get(k)
            first = seen.get(cid)
            if first is None and prev is not None and prev == e.line:
                if k in spooled:
                    retried.append(k)  # this request's own retry, back from the spool
                else:  # its line, read again after a restart: accounted for already
                    skipped.append(i)
                    continue
            elif first is None and prev is None:
                fresh_h.append(k[0])
                fresh_cl.append(k[1] << 32 | e.line)
            else:
                duplicates.append(i)
                used = first if first is not None else prev if prev is not None else 0
                msg = f"custom_id {cid!r} already used on line {used}"
                dup_rows.append((e.line, cid, "invalid_request_error", msg))
                continue
            seen[cid] = e.line
            members.append(member(e))
    added = _insert_rejects(c, [_reject_row(r) for r in rejects])
    local_id = 0
    if members:
        if retried:
            c.executemany("DELETE FROM spool WHERE h = ? AND c = ?", retried)
        if max(map(_attempt, entries)) > 1:
            again = [(*keys[i], e.attempt) for i, e in enumerate(entries) if e.attempt > 1]
            c.executemany("INSERT OR REPLACE INTO retried VALUES (?, ?, ?)", again)
        index.insert(c, fresh_h, fresh_cl)
        local_id = _new_intent(c, members)
        if dropped := {*duplicates, *skipped}:
            cost = sum([e.cost_usd for i, e in enumerate(entries) if i not in dropped])
        else:  # the same sum, in C
            cost = sum(map(_cost, entries))
        _bump(c, "estimated_nano_usd", whole_units(cost, NANO_PER_USD))  # never overflows
        c.execute(
            "UPDATE counters SET value = max(value, ?) WHERE name = 'max_line'",
            (max(map(_line, members)),),
        )
    added += _insert_rejects(c, dup_rows)
    _move_checkpoint(c, checkpoint, line)
    return ClaimResult(local_id, duplicates, skipped, added)


def members_of(c: sqlite3.Connection, local_id: int) -> list[Member]:
    """The batch's requests (none once it is collected or rejected)."""
    row = c.execute("SELECT reqs FROM batches WHERE local_id = ?", (local_id,)).fetchone()
    if row is None or row[0] is None:
        return []
    return _unpack(row[0])


def _new_intent(c: sqlite3.Connection, members: Sequence[Member]) -> int:
    cur = c.execute(
        "INSERT INTO batches(state, request_count, reqs) VALUES ('intent', ?, ?)",
        (len(members), _pack(members)),
    )
    assert cur.lastrowid is not None
    return cur.lastrowid


def spool_members(
    c: sqlite3.Connection,
    local_id: int,
    members: Sequence[Member],
    bump: int,
    *,
    table: str = "spool",
) -> None:
    """Send ``members`` of batch ``local_id`` back to the spool with their attempt
    plus ``bump`` (or, ``table="canceled"``, hold them as canceled), and note them as
    no longer owed by the batch."""
    if not members:
        return
    rows = []
    for cid, line, offset, length, attempt, raw in members:
        h, k = key_of(cid)
        rows.append((h, k, cid, line, offset, length, raw, attempt + bump))
    rows.sort(key=lambda row: row[3])  # in source order: read back in one pass
    if table == "spool":
        c.executemany(_SPOOL, rows)
    else:
        c.executemany("INSERT OR IGNORE INTO canceled VALUES (?, ?, ?, ?, ?, ?, ?, ?)", rows)
    if bump:
        c.executemany(
            "INSERT OR REPLACE INTO retried VALUES (?, ?, ?)", [(r[0], r[1], r[7]) for r in rows]
        )
    c.execute(
        "INSERT INTO written(local_id, ids, spooled) VALUES (?, ?, 1)",
        (local_id, _encode([m[0] for m in members]).decode()),
    )
    c.execute(
        "UPDATE batches SET spooled = spooled + ? WHERE local_id = ?", (len(members), local_id)
    )


def done_ids(c: sqlite3.Connection, local_id: int) -> set[str]:
    """The custom_ids the batch has written or sent back to the spool."""
    return {
        row[0]
        for row in c.execute(
            "SELECT j.value FROM written AS w, json_each(w.ids) AS j WHERE w.local_id = ?",
            (local_id,),
        )
    }


def _settle_batch(c: sqlite3.Connection, local_id: int) -> int:
    """Mark the batch collected: nothing of it can be owed any more. What it claimed
    but wrote no line for is spooled first; how many."""
    missing = _spool_missing(c, local_id)
    c.execute("DELETE FROM written WHERE local_id = ?", (local_id,))
    c.execute("UPDATE batches SET state = 'collected', reqs = NULL WHERE local_id = ?", (local_id,))
    return missing


def _spool_missing(c: sqlite3.Connection, local_id: int) -> int:
    """Spool the requests a collected batch claimed but wrote no line for; how many.

    The batch misses nothing exactly when the lines it wrote and the requests it
    spooled make its count: one row read in the common case, the set difference
    only when something is missing."""
    count, written, spooled = c.execute(
        "SELECT request_count, results_written, spooled FROM batches WHERE local_id = ?",
        (local_id,),
    ).fetchone()
    if count - spooled <= written:
        return 0
    done = done_ids(c, local_id)
    missing = [m for m in members_of(c, local_id) if m[0] not in done]
    spool_members(c, local_id, missing, 1)
    return len(missing)


def _insert_rejects(c: sqlite3.Connection, rows: Sequence[tuple[int, str | None, str, str]]) -> int:
    """Insert reject rows; how many were new (``rejects_once`` ignores the rest)."""
    return c.executemany(_INSERT_REJECT, rows).rowcount if rows else 0


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


def attempts_of(c: sqlite3.Connection, index: IdIndex, custom_ids: Iterable[str]) -> dict[str, int]:
    """The attempt of each custom_id the job holds: of the next submission when it
    is spooled, else of its last one (1 unless it was sent again)."""
    by_key = {key_of(cid): cid for cid in custom_ids}
    if not by_key:
        return {}
    probe = _encode(sorted({h for h, _ in by_key}))
    out: dict[str, int] = {}
    for table in ("retried", "spool"):  # the spool's, when both, wins
        for h, k, attempt in c.execute(
            f"SELECT t.h, t.c, t.attempt FROM json_each(?) AS j CROSS JOIN {table} AS t "
            "ON t.h = j.value",
            (probe,),
        ):
            if (h, k) in by_key:
                out[by_key[(h, k)]] = attempt
    for k in index.find(c, [k for k, cid in by_key.items() if cid not in out]):
        out[by_key[k]] = 1
    return out


def stored_elsewhere(c: sqlite3.Connection, custom_ids: Iterable[str]) -> list[SpoolItem]:
    """The requests of ``custom_ids`` waiting in the spool or held as canceled."""
    by_key = {key_of(cid): cid for cid in custom_ids}
    if not by_key:
        return []
    probe = _encode(sorted({h for h, _ in by_key}))
    items = []
    for table in ("spool", "canceled"):
        for h, k, cid, line, attempt, offset, length, raw in c.execute(
            "SELECT t.h, t.c, t.custom_id, t.line, t.attempt, t.offset, t.length, t.raw "
            f"FROM json_each(?) AS j CROSS JOIN {table} AS t ON t.h = j.value",
            (probe,),
        ):
            if by_key.get((h, k)) == cid:
                items.append(SpoolItem(cid, line, attempt, offset, length, raw))
    return items


class MemberCache:
    """The decoded records of the batches in flight (``batches.reqs``), by custom_id:
    a record is decoded once, not at every ``requests`` call; one whose batch left
    flight (collected, rejected, released, re-split) is dropped at the next call."""

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[int, dict[str, Member]] = {}

    def in_flight(self, c: sqlite3.Connection) -> list[int]:
        """The batches with a record now (and the cache trimmed to them)."""
        ids = [row[0] for row in c.execute("SELECT local_id FROM batches WHERE reqs IS NOT NULL")]
        for gone in self._records.keys() - set(ids):
            del self._records[gone]
        return ids

    def get(self, c: sqlite3.Connection, local_id: int) -> dict[str, Member]:
        """The batch's requests by custom_id."""
        record = self._records.get(local_id)
        if record is None:
            record = self._records[local_id] = {m[0]: m for m in members_of(c, local_id)}
        return record


class WrittenIds:
    """One batch's requests and the custom_ids it has written or spooled, as read up
    to ``written`` row ``seq``: kept for a batch being downloaded again, so each
    ``unwritten`` call reads only the commits made since the last one. A batch's rows
    leave ``written`` only when it is collected, and new rows get a higher ``seq``
    than any of its own."""

    __slots__ = ("ids", "local_id", "members", "seq")

    def __init__(self, local_id: int) -> None:
        self.local_id = local_id
        self.ids: set[str] = set()
        self.members: set[str] | None = None
        self.seq = 0

    def update(self, c: sqlite3.Connection) -> set[str]:
        """The ids, with the rows committed since the last call added."""
        if self.members is None:
            self.members = {m[0] for m in members_of(c, self.local_id)}
        for seq, value in c.execute(
            "SELECT w.seq, j.value FROM written AS w, json_each(w.ids) AS j "
            "WHERE w.local_id = ? AND w.seq > ?",
            (self.local_id, self.seq),
        ):
            self.ids.add(value)
            self.seq = max(self.seq, seq)
        return self.ids
