"""The bodies of the SQLite ledger's transactions, and the SQL they share with its
methods: plain functions of the connection, run in the worker thread inside the
one transaction that ``SQLiteLedger._run`` opens (they never begin, commit or roll
back one themselves).

A batch's requests are one record (``batch_requests.reqs``, ``Columns`` in msgpack: the
custom_ids, lines, offsets, lengths and attempts as one array each) while it is in
flight, and its custom_ids are keys of ``_sqlite_ids`` for the rest of the job: a
claim writes one row for the batch and one row of keys, whatever they look like.
Once the ids are hashed, a claim defers the requests whose id the filter cannot rule
out (``deferred``); ``resolve`` settles them many at once.
"""

from __future__ import annotations

from array import array
from operator import attrgetter, sub
from typing import TYPE_CHECKING

import msgspec

from .._errors import UsageError
from .._pricing import whole_units
from ._base import ClaimResult, Settled, SpoolItem
from ._sqlite_ids import key_of
from ._sqlite_schema import NANO_PER_USD

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable, Sequence

    from ..stages._items import Entry, Reject
    from ._sqlite_ids import IdIndex

#: one request of a batch: custom_id, line, offset, length, attempt, raw (None when
#: it is read back from the source file at offset, length)
Member = tuple[str, int, int, int, int, bytes | None]


class Columns(
    msgspec.Struct,
    omit_defaults=True,
    rename={"ids": "i", "lines": "l", "offsets": "o", "lengths": "n", "attempts": "a", "raws": "r"},
):
    """A batch's requests as ``batch_requests.reqs`` holds them: one array per field (a
    claim builds each with one pass in C; a row per request took a tuple each).
    ``raws`` only when a request has no place in a source file to be read back from
    (then ``raws[i]`` is its bytes, else None)."""

    ids: list[str]
    lines: list[int]
    offsets: list[int]
    lengths: list[int]
    attempts: list[int]
    raws: list[bytes | None] | None = None

    def members(self) -> list[Member]:
        raws = self.raws if self.raws is not None else [None] * len(self.ids)
        return list(
            zip(self.ids, self.lines, self.offsets, self.lengths, self.attempts, raws, strict=True)
        )


_encode = msgspec.json.encode
_custom_id = attrgetter("custom_id")
_line = attrgetter("line")
_offset = attrgetter("offset")
_end = attrgetter("end")
_attempt = attrgetter("attempt")
_cost = attrgetter("cost_usd")
_pack = msgspec.msgpack.Encoder().encode
#: a record of schema 4 (``Columns``), or of schema 3 (a row per request)
_unpack = msgspec.msgpack.Decoder(
    Columns | list[tuple[str, int, int, int, int, bytes | None]]
).decode

#: idempotent: a line read again after a restart is rejected once (``rejects_once``)
_INSERT_REJECT = "INSERT OR IGNORE INTO rejects(line, custom_id, type, message) VALUES (?, ?, ?, ?)"
_SPOOL = (
    "INSERT OR IGNORE INTO spool(h, c, custom_id, line, offset, length, raw, attempt) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_DEFER = (
    "INSERT INTO deferred(h, c, custom_id, line, offset, length, raw, attempt) "
    "VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def _reject_row(r: Reject) -> tuple[int, str | None, str, str]:
    return (r.line, r.custom_id, r.error.type, r.error.message)


def columns_of(entries: Sequence[Entry], ids: list[str]) -> Columns:
    """The batch record of claimed ``entries`` (``ids``: their custom_ids)."""
    offsets = list(map(_offset, entries))
    lengths = list(map(sub, map(_end, entries), offsets))
    raws: list[bytes | None] | None = None
    if offsets and (min(offsets) < 0 or min(lengths) <= 0):
        # some have no place in a source file: their bytes go in the record
        lengths = [e.end - e.offset if e.end > e.offset >= 0 else len(e.raw) for e in entries]
        raws = [None if e.end > e.offset >= 0 else e.raw for e in entries]
    return Columns(
        ids, list(map(_line, entries)), offsets, lengths, list(map(_attempt, entries)), raws
    )


def _claim(
    c: sqlite3.Connection,
    index: IdIndex,
    entries: Sequence[Entry],
    rejects: Sequence[Reject],
    checkpoint: int,
    line: int,
) -> ClaimResult:
    ids = list(map(_custom_id, entries))
    distinct = len(set(ids)) == len(ids)
    # while the ids go up: the first line of each id the job holds already (only ids
    # not above all those held are looked up), no keys. Once hashed: nothing looked
    # up, the keys, and those the filter could not rule out (``maybe``): each is this
    # request's own retry (in the spool), a line read again, a copy of a spooled or
    # deferred id, or else deferred, to be resolved with many others (``resolve``)
    known, keys, maybe = index.lookup(c, ids)
    spooled: set[str] = set()
    pending: set[int] = set()
    deferred_lines: dict[str, set[int]] = {}
    if maybe:
        assert keys is not None
        hs, cs = keys
        known, deferred_lines = _waiting(c, {(hs[i], cs[i]): ids[i] for i in maybe})
        spooled = set(known)
        pending = set(maybe)
    elif known:
        by_key = {key_of(cid): cid for cid in known}
        rows = c.execute(
            "SELECT s.h, s.c FROM json_each(?) AS j CROSS JOIN spool AS s ON s.h = j.value",
            (_encode(sorted({h for h, _ in by_key})),),
        )
        spooled = {by_key[row] for row in rows.fetchall() if row in by_key}
    retried: list[str] = []
    duplicates: list[int] = []
    skipped: list[int] = []
    deferred: list[int] = []
    dup_rows: list[tuple[int, str | None, str, str]] = []
    if not known and not maybe and distinct:
        # the common case: all new, no need to look at each
        kept: Sequence[Entry] = entries
        record = columns_of(entries, ids)
        fresh_ids, fresh_lines, fresh_keys = ids, record.lines, keys
    elif not known and distinct:
        # ids hashed, none in the spool, no copies within the claim: the filter's
        # positives wait (or were read again), every other entry is new
        assert keys is not None
        for i in maybe:
            if entries[i].line in deferred_lines.get(ids[i], ()):
                skipped.append(i)  # deferred, and read again
            else:
                deferred.append(i)
        # the few positives taken out of copies (in C), not every entry looked at
        kept, fresh_ids, fresh_hs, fresh_cs = (
            list(entries),
            list(ids),
            list(keys[0]),
            list(keys[1]),
        )
        for i in reversed(maybe):
            del kept[i], fresh_ids[i], fresh_hs[i], fresh_cs[i]
        record = columns_of(kept, fresh_ids)
        fresh_lines = record.lines
        fresh_keys = (fresh_hs, fresh_cs)
    else:
        seen: dict[str, int] = {}
        fresh: list[int] = []
        kept = []
        for i, e in enumerate(entries):
            cid = e.custom_id
            prev = known.get(cid)
            first = seen.get(cid)
            if first is None and prev is None and i in pending:
                if e.line in deferred_lines.get(cid, ()):  # deferred, and read again
                    skipped.append(i)
                else:  # maybe held: resolved later, with many others (copies too)
                    deferred.append(i)
                continue
            if first is None and prev is not None and prev == e.line:
                if cid in spooled:
                    retried.append(cid)  # this request's own retry, back from the spool
                else:  # its line, read again after a restart: accounted for already
                    skipped.append(i)
                    continue
            elif first is None and prev is None:
                fresh.append(i)
            else:
                duplicates.append(i)
                used = first if first is not None else prev if prev is not None else 0
                msg = f"custom_id {cid!r} already used on line {used}"
                dup_rows.append((e.line, cid, "invalid_request_error", msg))
                continue
            seen[cid] = e.line
            kept.append(e)
        record = columns_of(kept, [e.custom_id for e in kept])
        fresh_ids = [ids[i] for i in fresh]
        fresh_lines = [entries[i].line for i in fresh]
        fresh_keys = (
            None if keys is None else ([keys[0][i] for i in fresh], [keys[1][i] for i in fresh])
        )
    added = _insert_rejects(c, [_reject_row(r) for r in rejects])
    local_id = 0
    if kept:
        if retried:
            c.executemany("DELETE FROM spool WHERE h = ? AND c = ?", map(key_of, retried))
        if max(map(_attempt, entries)) > 1:
            again = [(*key_of(e.custom_id), e.attempt) for e in entries if e.attempt > 1]
            c.executemany("INSERT OR REPLACE INTO retried VALUES (?, ?, ?)", again)
        index.insert(c, fresh_ids, fresh_lines, fresh_keys)
        local_id = _insert_intent(c, len(kept), _pack(record))
    if deferred:
        assert keys is not None
        waiting = [entries[i] for i in deferred]
        columns = columns_of(waiting, [e.custom_id for e in waiting])
        raws = columns.raws if columns.raws is not None else [None] * len(waiting)
        c.executemany(
            _DEFER,
            [
                (keys[0][i], keys[1][i], e.custom_id, e.line, offset, length, raw, e.attempt)
                for i, e, offset, length, raw in zip(
                    deferred, waiting, columns.offsets, columns.lengths, raws, strict=True
                )
            ],
        )
    if kept or deferred:
        if dropped := {*duplicates, *skipped}:
            cost = sum([e.cost_usd for i, e in enumerate(entries) if i not in dropped])
        else:  # the same sum, in C
            cost = sum(map(_cost, entries))
        _bump(c, "estimated_nano_usd", whole_units(cost, NANO_PER_USD))  # never overflows
        top = max(record.lines, default=0)
        if deferred:
            top = max(top, max(entries[i].line for i in deferred))
        c.execute("UPDATE counters SET value = max(value, ?) WHERE name = 'max_line'", (top,))
    added += _insert_rejects(c, dup_rows)
    _move_checkpoint(c, checkpoint, line)
    settled = resolve(c, index) if index.due() else Settled()
    return ClaimResult(
        local_id,
        duplicates,
        skipped,
        added + settled.rejected,
        deferred=deferred,
        settled=settled.settled,
        released=settled.released,
    )


def _waiting(
    c: sqlite3.Connection, by_key: dict[tuple[int, int], str]
) -> tuple[dict[str, int], dict[str, set[int]]]:
    """Of the ids ``by_key`` (by key): the line of those in the spool (held: their
    own retry, or a copy of it), and the lines of those deferred."""
    probe = _encode(sorted({h for h, _ in by_key}))
    spooled: dict[str, int] = {}
    deferred: dict[str, set[int]] = {}
    for table in ("spool", "deferred"):
        rows = c.execute(
            f"SELECT t.h, t.c, t.line FROM json_each(?) AS j CROSS JOIN {table} AS t "
            "ON t.h = j.value",
            (probe,),
        )
        for h, k, line in rows.fetchall():
            cid = by_key.get((h, k))
            if cid is None:
                continue
            if table == "spool":
                spooled[cid] = line
            else:
                deferred.setdefault(cid, set()).add(line)
    return spooled, deferred


def resolve(c: sqlite3.Connection, index: IdIndex) -> Settled:
    """Settle every deferred request, by line (the first line wins): a key the job
    holds from another line makes it a reject naming that line; from its own line,
    it was read again after a restart (nothing to do); else it is new: held from now
    on, and spooled to be sent (as a retry is, same attempt). Memory: the deferred
    keys' ``h`` and the new ones packed (tens of thousands at ten million)."""
    index.resolved()
    wanted = {h for (h,) in c.execute("SELECT h FROM deferred")}
    if not wanted:
        return Settled()
    held = index.held_lines(c, wanted)
    del wanted
    # keys deferred more than once (copies): the first line of each wins
    for key in c.execute("SELECT h, c FROM deferred GROUP BY h, c HAVING count(*) > 1"):
        held.setdefault(key, 0)
    settled = 0
    new_seq, new_h, new_c, new_line = array("q"), array("q"), array("h"), array("q")
    dup_rows: list[tuple[int, str | None, str, str]] = []
    rows = c.execute("SELECT seq, h, c, line, custom_id FROM deferred ORDER BY line, seq")
    for seq, h, k, line, cid in rows:
        settled += 1
        used = held.get((h, k))
        if not used:  # (0: a key deferred more than once, its first line comes now)
            if used == 0:
                held[(h, k)] = line
            new_seq.append(seq)
            new_h.append(h)
            new_c.append(k)
            new_line.append(line)
        elif used != line:
            msg = f"custom_id {cid!r} already used on line {used}"
            dup_rows.append((line, cid, "invalid_request_error", msg))
    if new_seq:
        index.hold(c, new_h, new_c, new_line)
        c.execute(
            "INSERT OR IGNORE INTO spool(h, c, custom_id, line, offset, length, raw, attempt) "
            "SELECT h, c, custom_id, line, offset, length, raw, attempt FROM deferred "
            "WHERE seq IN (SELECT value FROM json_each(?)) ORDER BY line",
            (_encode(new_seq.tolist()),),
        )
    c.execute("DELETE FROM deferred")
    return Settled(settled, len(new_seq), _insert_rejects(c, dup_rows))


def members_of(c: sqlite3.Connection, local_id: int) -> list[Member]:
    """The batch's requests (none once it is collected or rejected)."""
    row = c.execute("SELECT reqs FROM batch_requests WHERE local_id = ?", (local_id,)).fetchone()
    if row is None or row[0] is None:
        return []
    record = _unpack(row[0])
    return record.members() if isinstance(record, Columns) else record


def _new_intent(c: sqlite3.Connection, members: Sequence[Member]) -> int:
    if not members:
        return _insert_intent(c, 0, _pack(Columns([], [], [], [], [])))
    ids, lines, offsets, lengths, attempts, raws = (list(f) for f in zip(*members, strict=True))
    record = Columns(
        ids, lines, offsets, lengths, attempts, None if all(r is None for r in raws) else raws
    )
    return _insert_intent(c, len(members), _pack(record))


def _insert_intent(c: sqlite3.Connection, count: int, record: bytes) -> int:
    local_id = c.execute(
        "INSERT INTO batches(state, request_count) VALUES ('intent', ?)", (count,)
    ).lastrowid
    assert local_id is not None
    c.execute("INSERT INTO batch_requests VALUES (?, ?)", (local_id, record))
    return local_id


def drop_batch(c: sqlite3.Connection, local_id: int) -> None:
    """Delete the batch and its record (released, or moved into new intents)."""
    c.execute("DELETE FROM batches WHERE local_id = ?", (local_id,))
    c.execute("DELETE FROM batch_requests WHERE local_id = ?", (local_id,))


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
    c.execute("UPDATE batches SET state = 'collected' WHERE local_id = ?", (local_id,))
    c.execute("DELETE FROM batch_requests WHERE local_id = ?", (local_id,))
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
    for cid in index.find(c, [cid for cid in by_key.values() if cid not in out]):
        out[cid] = 1
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
    """The decoded records of the batches in flight (``batch_requests``), by custom_id:
    a record is decoded once, not at every ``requests`` call; one whose batch left
    flight (collected, rejected, released, re-split) is dropped at the next call."""

    __slots__ = ("_records",)

    def __init__(self) -> None:
        self._records: dict[int, dict[str, Member]] = {}

    def in_flight(self, c: sqlite3.Connection) -> list[int]:
        """The batches with a record now (and the cache trimmed to them)."""
        ids = [row[0] for row in c.execute("SELECT local_id FROM batch_requests")]
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
