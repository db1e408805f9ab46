"""The job's custom_ids, for finding duplicates at a cost per request that does not
grow with the job, whatever the ids look like.

A B-tree of every custom_id (the ledger's layout up to schema version 2) makes a
claim of 10,000 random ids (UUIDs, hashes) touch, and rewrite to the WAL, most of
its leaves: the cost per request grew with the job (3.5 µs per request at 1M, 13 in
the last tenth of 3M). Here:

- each id is an 80-bit key: the first 64 bits of its BLAKE2b digest (``h``), the
  runs' sort key, and 16 more (``c``), checked when two ids share ``h``, so that two
  different ids pass for one with a chance of about n² / 2^81 (4e-11 at ten million
  ids); the runs keep ``h`` and ``c`` with the id's first line (about 24 bytes a
  key on disk), not the id;
- the keys live in sorted *runs* (an LSM tree): a claim writes its keys as one new
  run, sorted, appended at the end of the level-0 table (sequential pages, never
  the middle of a big tree); ``FANOUT`` runs of one level are merged into one run
  of the next (a sequential rewrite: each key is rewritten ``log_FANOUT(n /
  claim)`` times over the job, once up to ten million, so the cost per request
  grows by one rewrite per 32-fold growth of the job, not with its size);
- a Bloom filter in memory (``KeyFilter``, about 12 bits per id: 15 MB at ten
  million) says which keys of a claim may be known; only those few (about 1.5%)
  are looked up in the runs. It is rebuilt from the runs when the ledger opens.

- while the job's ids go up (string order: ``r-000000001``, ...), an id above the
  greatest id held (``IdIndex.top``, kept in the meta row ``ids_top``) is new by
  one comparison, and nothing is hashed and no filter kept: a claim stores its new
  ids themselves, in order, in rows of ``idruns`` of up to ``CHUNK`` ids each (the
  row's first and last id, and the ids with their lines as one msgpack blob). Those
  rows never overlap (each claim's ids are above the last one's), so an id not
  above ``top`` (a retry, a line the dry run held back) is looked up with one seek
  and a bisection in one row, however big the job. The few new ids that are not
  above ``top`` when claimed go to ``idlate``, one row each. When those are more
  than ``LATE_SHARE`` of the ids held (the ids do not go up after all: UUIDs),
  the mode ends for good: the ids are hashed into runs of keys, sorted into one,
  the filter is built, and the index works as above from then on.

The runs are tables ``ids0`` ... ``ids{LEVELS-1}`` (one per level, so a merge reads
one table and appends to another) and ``runs`` (run id, level, size); while the ids
go up, ``idruns`` and ``idlate``. Every change is part of the claim's transaction: a crash leaves
the runs as the last commit.
"""

from __future__ import annotations

import functools
import hashlib
import struct
from array import array
from bisect import bisect_left, bisect_right
from itertools import islice
from typing import TYPE_CHECKING

import msgspec

from ._files import transaction

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Iterable, Sequence

__all__ = (
    "FANOUT",
    "IDRUNS_SCHEMA",
    "IDS_SCHEMA",
    "CHUNK",
    "IDS_TABLES",
    "LATE_SHARE",
    "LEVELS",
    "TOP_KEY",
    "IdIndex",
    "KeyFilter",
    "key_of",
    "keys_of",
)

#: runs of one level merged into one run of the next. 32: a key is rewritten once up
#: to 10.24M requests (claims of 10,000), twice up to 328M. 16 rewrote it twice from
#: 2.56M on (claims of 4M random ids: 3.51 µs per request, merges 0.92 of it; with
#: 32: 2.98, merges 0.60, the lookups of the filter's false positives, a lookup in
#: each run, 0.13 -> 0.17); 8 rewrote it a third time at 640k.
FANOUT = 32
#: levels of runs (the last one is never merged: level 7 holds runs of 32^7 claims)
LEVELS = 8
IDS_TABLES = tuple(f"ids{level}" for level in range(LEVELS))
#: ``cl``: the key's ``c`` and the id's first source line as one integer, ``c << 32 |
#: line`` (a claim inserts each run as one JSON object ``{h: cl}``: two atoms per row,
#: nothing to extract; a line number stays below 2^32)
IDS_SCHEMA = "".join(
    f"CREATE TABLE {table}(run INTEGER NOT NULL, h INTEGER NOT NULL, cl INTEGER NOT NULL, "
    "PRIMARY KEY (run, h, cl)) WITHOUT ROWID;\n"
    for table in IDS_TABLES
) + ("CREATE TABLE runs(run INTEGER PRIMARY KEY, level INTEGER NOT NULL, size INTEGER NOT NULL);\n")

#: while the job's ids go up: a claim's new ids above the greatest one held before,
#: sorted, ``CHUNK`` a row, with their lines (``body``: msgpack ``[ids, lines]``);
#: ``lo``/``hi``, the row's first and last id (rows never overlap: one seek finds the
#: row that may hold an id). ``idlate``: a claim's new ids that were not above it.
IDRUNS_SCHEMA = (
    "CREATE TABLE idruns(lo TEXT PRIMARY KEY, hi TEXT NOT NULL, size INTEGER NOT NULL, "
    "body BLOB NOT NULL);\n"
    "CREATE TABLE idlate(id TEXT PRIMARY KEY, line INTEGER NOT NULL) WITHOUT ROWID;\n"
)
#: ids in a row of ``idruns``: a lookup reads one row (about 15 KB, 30 µs to decode)
CHUNK = 1024
#: the ids-in-order mode ends when ``idlate`` holds more than this share of the ids
#: held (and more than ``_LATE_FLOOR``): a string B-tree that grows with the job is
#: what the runs of keys are for
LATE_SHARE = 1 / 8
_LATE_FLOOR = 20_000

_M32 = (1 << 32) - 1
_M64 = (1 << 64) - 1
_blake2b = hashlib.blake2b
#: a 10-byte digest as a signed 64-bit ``h`` and a signed 16-bit ``c``
_unpack = struct.Struct("<qh").unpack
_encode = msgspec.json.encode
_decode_top = msgspec.json.Decoder(tuple[str, int]).decode
_pack_run = msgspec.msgpack.Encoder().encode
_unpack_run = msgspec.msgpack.Decoder(tuple[list[str], list[int]]).decode
#: the ``meta`` row of ``IdIndex.top``: ``[top, keys held]`` (absent: not kept)
TOP_KEY = "ids_top"


#: an empty BLAKE2b state with a 10-byte digest: ``copy`` and ``update`` of it cost
#: a quarter less than a new ``blake2b(..., digest_size=10)`` (no keywords to parse)
_EMPTY = _blake2b(digest_size=10)


def key_of(custom_id: str) -> tuple[int, int]:
    """The id's key: 64 bits and 16 more of its BLAKE2b digest, both signed (SQLite
    integers; ``c << 32 | line`` fits one in 6 bytes)."""
    h = _EMPTY.copy()
    h.update(custom_id.encode())
    key: tuple[int, int] = _unpack(h.digest())
    return key


def keys_of(custom_ids: Iterable[str]) -> list[tuple[int, int]]:
    """``key_of`` of each id (one loop, no call per id)."""
    copy, unpack = _EMPTY.copy, _unpack
    keys: list[tuple[int, int]] = []
    append = keys.append
    for cid in custom_ids:
        h = copy()
        h.update(cid.encode())
        append(unpack(h.digest()))
    return keys


#: bits of filter per key (false positives cost a lookup in every run)
_BITS_PER_KEY = 12
#: keys a filter is made for at the least (1.5 MB)
_MIN_KEYS = 1 << 20


@functools.cache
def _masks() -> array[int]:
    """The filter's bit masks, up to four bits set in each (four in 91%), chosen by
    16 bits of ``h``: one lookup instead of four shifts per key (a third less time).
    The same in every process (a filter is rebuilt from the runs); made when the
    first filter is (about 15 ms). An array, not a list: 0.5 MB instead of 2.9 (a
    list holds an int object for each), and a lookup costs the same."""
    spread = (x * 0x9E3779B97F4A7C15 & _M64 for x in range(1 << 16))  # Fibonacci hashing
    return array(
        "Q",
        (
            (1 << (m & 63)) | (1 << ((m >> 16) & 63)) | (1 << ((m >> 32) & 63)) | (1 << (m >> 58))
            for m in spread
        ),
    )


class KeyFilter:
    """A blocked Bloom filter of keys' ``h``: one 64-bit word per key, four bits in
    it (about 1.5% false positives at 12 bits per key). When the keys outgrow it, a
    filter twice as large is added for the new ones (the old ones stay, each key is
    checked in every filter): memory is about 1.5 bytes per id, nothing is rebuilt.
    """

    __slots__ = ("_capacity", "_count", "_filters", "_masks")

    def __init__(self, capacity: int) -> None:
        self._masks = _masks()
        self._filters: list[tuple[array[int], int]] = []
        self._capacity = 0
        self._count = 0
        self._grow(max(capacity, _MIN_KEYS))

    def _grow(self, capacity: int) -> None:
        # exactly sized (a word index is h modulo the words, not a power of two)
        words = max(1024, capacity * _BITS_PER_KEY // 64)
        # (a repeat, not a copy of zero bytes: no second buffer of the filter's size)
        self._filters.append((array("Q", (0,)) * words, words))
        self._count = 0
        self._capacity = words * 64 // _BITS_PER_KEY

    @property
    def nbytes(self) -> int:
        """Memory held by the filter's bits."""
        return sum(8 * n for _, n in self._filters)

    def add(self, hs: Iterable[int]) -> None:
        """Add keys (when the filter is rebuilt: ten million at a reopen): each key
        that finds the newest filter full makes room (as ``_add``), then the keys it
        has room for go in one loop (the same bits as ``_add`` one by one)."""
        masks = self._masks
        keys = iter(hs)
        for first in keys:
            self._add(first)
            words, n = self._filters[-1]
            room = self._capacity - self._count
            added = 0
            for added, h in enumerate(islice(keys, room), 1):  # noqa: B007 (read after)
                words[h % n] |= masks[(h >> 40) & 0xFFFF]
            self._count += added

    def _add(self, h: int) -> None:
        if self._count >= self._capacity:
            self._grow(2 * self._capacity)
        words, n = self._filters[-1]
        words[h % n] |= self._masks[(h >> 40) & 0xFFFF]
        self._count += 1

    def known(self, hs: Sequence[int]) -> list[int]:
        """The indices of the keys that may have been added before; every other key
        is added now (so a second copy within ``hs`` counts as maybe known)."""
        maybe: list[int] = []
        if len(self._filters) == 1 and self._count + len(hs) <= self._capacity:
            words, n = self._filters[0]  # the common case, inlined
            masks = self._masks
            for i, h in enumerate(hs):
                bits = masks[(h >> 40) & 0xFFFF]
                j = h % n
                word = words[j]
                if word & bits == bits:
                    maybe.append(i)
                else:
                    words[j] = word | bits
            self._count += len(hs) - len(maybe)
            return maybe
        filters = self._filters
        for i, h in enumerate(hs):
            bits = self._masks[(h >> 40) & 0xFFFF]
            for words, n in filters:
                if words[h % n] & bits == bits:
                    maybe.append(i)
                    break
            else:
                self._add(h)
        return maybe


def _runs_of(c: sqlite3.Connection, level: int) -> list[int]:
    """The runs of ``level``, oldest first."""
    rows = c.execute("SELECT run FROM runs WHERE level = ? ORDER BY run", (level,))
    return [row[0] for row in rows.fetchall()]


def _held(c: sqlite3.Connection) -> tuple[int, int]:
    """The number of ids the job holds (in runs of keys, ``idruns`` and ``idlate``),
    and of those in ``idlate``."""
    row = c.execute(
        "SELECT (SELECT coalesce(sum(size), 0) FROM runs) + "
        "(SELECT coalesce(sum(size), 0) FROM idruns), (SELECT count(*) FROM idlate)"
    ).fetchone()
    return int(row[0]) + int(row[1]), int(row[1])


class IdIndex:
    """The runs of keys in the database, and their filter in memory (see module).

    While the job's ids go up (string order: ``r-000000001``, ...), an id above
    ``top``, the greatest id held, is new by one comparison: the index keeps no
    filter (``filter`` is None), hashes nothing, stores a claim's new ids in rows of
    ``idruns`` (or ``idlate``, the few not above ``top``), and looks up only a
    claim's ids that are not above ``top`` (retries, lines held back and released
    later): one seek each, in ``idruns`` and ``idlate``. Once ``idlate`` holds more
    than ``LATE_SHARE`` of the ids, the mode ends: the ids are hashed into runs of
    keys and the filter is built (as an open does), and the index keeps it from then
    on. ``top`` is kept in the meta row ``ids_top`` with the number of ids held when
    it was written, so that a reopen trusts it only if nothing else added ids since.
    """

    __slots__ = ("_below", "_capacity", "_held", "_late", "_stale", "filter", "top")

    def __init__(self) -> None:
        self.filter: KeyFilter | None = None
        #: the greatest id held while the job's claims go up; None once one did not
        self.top: str | None = None
        self._capacity = 0
        self._stale = False
        #: ids held, and of them in ``idlate``, while the ids go up
        self._held = 0
        self._late = 0
        #: ``top`` before the claim being made (its new ids not above it are late)
        self._below = ""

    def reset(self) -> None:
        """A transaction that used the index was rolled back: read it again from the
        database before its next use (a mode it left may not have been left)."""
        self._stale = True

    def _fresh(self, c: sqlite3.Connection) -> None:
        if self._stale:
            self._stale = False
            self.load(c, self._capacity)

    def load(self, c: sqlite3.Connection, capacity: int) -> None:
        """Read ``top``, or build the filter from the runs (when the ledger opens):
        sized for ``capacity`` ids, or twice the ids held if more."""
        held, late = _held(c)
        row = c.execute("SELECT value FROM meta WHERE key = ?", (TOP_KEY,)).fetchone()
        self._capacity = capacity
        self.filter, self.top = None, None
        self._held, self._late = held, late
        if row is None and held == 0:
            self.top = ""  # nothing held: every id is above
            return
        if row is not None:
            top, count = _decode_top(row[0])
            if count == held:
                self.top = top
                return
        if c.in_transaction:
            self._build(c)
        else:  # at open: a transaction of its own
            with transaction(c):
                self._build(c)

    def _build(self, c: sqlite3.Connection) -> None:
        """Leave the ids-in-order mode for good: hash the ids of ``idruns`` and
        ``idlate`` into runs of level 0 (about ten thousand at a time: memory stays
        that of a claim), sort level 0 into one run if it is full, build the filter."""
        c.execute("DELETE FROM meta WHERE key = ?", (TOP_KEY,))
        self.top = None
        # read a row at a time (the cursors stay open while other tables are written):
        # ten million ids would not fit in memory at once
        batch: tuple[list[str], list[int]] = ([], [])
        for (body,) in c.execute("SELECT body FROM idruns"):
            ids, lines = _unpack_run(body)
            batch[0].extend(ids)
            batch[1].extend(lines)
            if len(batch[0]) >= 10 * CHUNK:
                self._hashed_run(c, *batch)
                batch = ([], [])
        for cid, line in c.execute("SELECT id, line FROM idlate"):
            batch[0].append(cid)
            batch[1].append(line)
            if len(batch[0]) >= 10 * CHUNK:
                self._hashed_run(c, *batch)
                batch = ([], [])
        self._hashed_run(c, *batch)
        c.execute("DELETE FROM idruns")
        c.execute("DELETE FROM idlate")
        if len(_runs_of(c, 0)) >= FANOUT:
            self._compact(c)
        # sized as a fresh job's, for the requests its input is guessed to hold; for
        # twice the ids held once they pass that guess (a job of small requests). Not
        # twice the ids held always: a job resumed near its end would hold a filter
        # twice a fresh one's (29 MB instead of 17 at ten million)
        held = _held(c)[0]
        self.filter = KeyFilter(self._capacity if held <= self._capacity else 2 * held)
        for table in IDS_TABLES:
            self.filter.add(h for (h,) in c.execute(f"SELECT h FROM {table}"))

    def _hashed_run(self, c: sqlite3.Connection, ids: list[str], lines: list[int]) -> None:
        if ids:
            self._insert_run(c, keys_of(ids), lines)

    def lookup(
        self, c: sqlite3.Connection, ids: Sequence[str]
    ) -> tuple[dict[str, int], list[tuple[int, int]] | None]:
        """The first line of each of ``ids`` the job holds, and the keys of ``ids``
        (None while the ids go up: none is hashed). Those it does not hold must then
        be stored by ``insert``, in the same transaction.

        While the ids go up, only the ids not above ``top`` are looked up (``top``
        moves up). Once the mode has ended (``insert``), the filter rules out most
        keys (and learns the new ones) and only the others are looked up."""
        self._fresh(c)
        top = self.top
        if top is not None:
            self._below = top
            if not ids:
                return {}, None
            high = max(ids)
            if min(ids) > top:
                self.top = high
                return {}, None
            found = self._ordered_lookup(c, sorted({cid for cid in ids if cid <= top}))
            self.top = max(top, high)
            return found, None
        assert self.filter is not None
        keys = keys_of(ids)
        maybe = self.filter.known([k[0] for k in keys])
        if not maybe:
            return {}, keys
        held = self._probe(c, {keys[i] for i in maybe})
        return {ids[i]: held[keys[i]] for i in maybe if keys[i] in held}, keys

    @staticmethod
    def _ordered_lookup(c: sqlite3.Connection, below: list[str]) -> dict[str, int]:
        """The first line of each of ``below`` (sorted) held in ``idruns`` or
        ``idlate``: one seek per row of ``idruns`` that may hold some of them."""
        found: dict[str, int] = {}
        if not below:
            return found
        i, count = 0, len(below)
        while i < count:
            row = c.execute(
                "SELECT hi, body FROM idruns WHERE lo <= ? ORDER BY lo DESC LIMIT 1",
                (below[i],),
            ).fetchone()
            if row is None or row[0] < below[i]:  # before every row, or between two
                i += 1
                continue
            hi, body = row
            ids, lines = _unpack_run(body)
            while i < count and below[i] <= hi:
                j = bisect_left(ids, below[i])
                if j < len(ids) and ids[j] == below[i]:
                    found[below[i]] = lines[j]
                i += 1
        late = c.execute(
            "SELECT l.id, l.line FROM json_each(?) AS j CROSS JOIN idlate AS l ON l.id = j.value",
            (_encode(below),),
        )
        found.update(late.fetchall())
        return found

    def find(self, c: sqlite3.Connection, ids: Iterable[str]) -> set[str]:
        """Those of ``ids`` the job holds (the filter is not changed)."""
        wanted = sorted(set(ids))
        if not wanted:
            return set()
        self._fresh(c)
        if self.top is not None:
            top = self.top
            return set(self._ordered_lookup(c, [cid for cid in wanted if cid <= top]))
        keys = keys_of(wanted)
        held = self._probe(c, set(keys))
        return {cid for cid, k in zip(wanted, keys, strict=True) if k in held}

    @staticmethod
    def _probe(c: sqlite3.Connection, keys: set[tuple[int, int]]) -> dict[tuple[int, int], int]:
        """Look ``keys`` up in every run: the first line of each one found. (CROSS
        JOIN: SQLite keeps the keys as the outer loop, one seek each; left to choose,
        it scanned the run for each key.)"""
        if not keys:
            return {}
        probe = _encode(sorted({h for h, _ in keys}))
        found: dict[tuple[int, int], int] = {}
        for run, level in c.execute("SELECT run, level FROM runs ORDER BY run").fetchall():
            rows = c.execute(
                f"SELECT i.h, i.cl FROM json_each(?) AS j CROSS JOIN {IDS_TABLES[level]} AS i "
                "ON i.run = ? AND i.h = j.value",
                (probe, run),
            )
            for h, cl in rows:
                key = (h, cl >> 32)
                if key in keys:  # the same h and the same c: the same id
                    found.setdefault(key, cl & _M32)
        return found

    def insert(
        self,
        c: sqlite3.Connection,
        ids: list[str],
        lines: list[int],
        keys: list[tuple[int, int]] | None,
    ) -> None:
        """Store new ids (``lines``: the line of each): while they go up (``keys``
        None), the ids themselves, and end that mode when too many came late; else
        their ``keys`` as a new run, merging full levels."""
        if not ids:
            return
        if self.top is not None:
            self._insert_ordered(c, ids, lines)
            if self._late > _LATE_FLOOR and self._late > LATE_SHARE * self._held:
                self._build(c)  # the ids do not go up: hash them all, once
            return
        assert keys is not None
        self._insert_run(c, keys, lines)
        for level in range(LEVELS - 1):
            runs = _runs_of(c, level)
            if len(runs) < FANOUT:
                break
            self._merge(c, level, runs)

    def _insert_ordered(self, c: sqlite3.Connection, ids: list[str], lines: list[int]) -> None:
        """Ids above the greatest held before this claim in rows of ``CHUNK``, in
        order; the others in ``idlate``; the note of ``top`` and the count held."""
        below = self._below
        if ids != sorted(ids):
            pairs = sorted(zip(ids, lines, strict=True))
            ids, lines = [p[0] for p in pairs], [p[1] for p in pairs]
        first = bisect_right(ids, below)
        if first:
            # one JSON object {id: line} (the ids are distinct): one statement, in C
            late = dict(zip(ids[:first], lines[:first], strict=True))
            c.execute("INSERT INTO idlate SELECT key, value FROM json_each(?)", (_encode(late),))
            self._late += first
        c.executemany(
            "INSERT INTO idruns(lo, hi, size, body) VALUES (?, ?, ?, ?)",
            [
                (
                    ids[k],
                    ids[min(k + CHUNK, len(ids)) - 1],
                    min(CHUNK, len(ids) - k),
                    _pack_run((ids[k : k + CHUNK], lines[k : k + CHUNK])),
                )
                for k in range(first, len(ids), CHUNK)
            ],
        )
        self._held += len(ids)
        c.execute(
            "INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)",
            (TOP_KEY, _encode([self.top, self._held])),
        )

    @staticmethod
    def _insert_run(
        c: sqlite3.Connection, keys: Sequence[tuple[int, int]], lines: Sequence[int]
    ) -> None:
        """Append ``keys`` (``lines``: the first line of each) as a new run of level 0,
        rows of ``h`` and ``c << 32 | line``."""
        hs = [k[0] for k in keys]
        cls = [k[1] << 32 | n for k, n in zip(keys, lines, strict=True)]
        run = c.execute("INSERT INTO runs(level, size) VALUES (0, ?)", (len(hs),)).lastrowid
        members = dict(zip(hs, cls, strict=True))
        if len(members) == len(hs):
            # one JSON object {h: cl}, sorted by SQLite (in C): the run goes in in key
            # order, appended, its pages full
            c.execute(
                f"INSERT INTO {IDS_TABLES[0]} SELECT ?, CAST(key AS INTEGER) AS h, value "
                "FROM json_each(?) ORDER BY h",
                (run, _encode(members)),
            )
        else:  # two ids of the claim share h (about 1 in 10^11 claims)
            c.executemany(
                f"INSERT INTO {IDS_TABLES[0]} VALUES (?, ?, ?)",
                sorted((run, h, cl) for h, cl in zip(hs, cls, strict=True)),
            )

    @staticmethod
    def _compact(c: sqlite3.Connection) -> None:
        """Sort every run of level 0 into one run of the last level (never merged
        again): the ids-in-order mode leaves any number of runs in level 0, and a
        merge reads at most ``FANOUT``."""
        size = c.execute("SELECT coalesce(sum(size), 0) FROM runs WHERE level = 0").fetchone()[0]
        new = c.execute(
            "INSERT INTO runs(level, size) VALUES (?, ?)", (LEVELS - 1, int(size))
        ).lastrowid
        c.execute(
            f"INSERT INTO {IDS_TABLES[-1]} SELECT ?, h, cl FROM {IDS_TABLES[0]} ORDER BY h, cl",
            (new,),
        )
        c.execute(f"DELETE FROM {IDS_TABLES[0]}")
        c.execute("DELETE FROM runs WHERE level = 0")

    @staticmethod
    def _merge(c: sqlite3.Connection, level: int, runs: list[int]) -> None:
        """Merge ``runs`` of ``level`` into one run of the next level: each run is
        read in key order, merged (no sort), appended to the next table."""
        source, target = IDS_TABLES[level], IDS_TABLES[level + 1]
        size = c.execute(
            f"SELECT sum(size) FROM runs WHERE run IN ({', '.join('?' * len(runs))})", runs
        ).fetchone()[0]
        new = c.execute(
            "INSERT INTO runs(level, size) VALUES (?, ?)", (level + 1, int(size))
        ).lastrowid
        arms = " UNION ALL ".join(f"SELECT h, cl FROM {source} WHERE run = ?" for _ in runs)
        c.execute(
            f"INSERT INTO {target} SELECT ?, h, cl FROM ({arms} ORDER BY 1, 2)",
            (new, *runs),
        )
        c.execute(f"DELETE FROM {source}")  # every run of the level was merged
        c.execute(f"DELETE FROM runs WHERE run IN ({', '.join('?' * len(runs))})", runs)
