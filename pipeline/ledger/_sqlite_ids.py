"""The job's custom_ids, for finding duplicates at a cost per request that does not
grow with the job, whatever the ids look like.

A B-tree of every custom_id (the ledger's layout up to schema version 2) makes a
claim of 10,000 random ids (UUIDs, hashes) touch, and rewrite to the WAL, most of
its leaves: the cost per request grew with the job (3.5 µs per request at 1M, 13 in
the last tenth of 3M). Sorted runs of hashed keys merged in the background (schema
versions 3 and 4) made it flat, but a run's insert and its merges cost SQLite about
1.4 µs per request. Here (schema 5):

- each id is an 80-bit key: the first 64 bits of its BLAKE2b digest (``h``) and 16
  more (``c``), so that two different ids pass for one with a chance of about
  n² / 2^81 (4e-11 at ten million ids);
- a Bloom filter in memory (``KeyFilter``, about 12 bits per id: 15 MB at ten
  million) says which keys of a claim may be held. Those it rules out (about 98.8%
  of new ids) are new: the claim stores them as one row of ``idclaims``, the keys'
  ``h``, ``c`` and first lines as packed arrays (14 bytes a key), never sorted, never
  merged, never looked up one by one;
- the others (``lookup``'s ``maybe``: the filter's false positives, copies of ids
  held, retries) are looked up in the spool (a retry finds its own row) and else
  *deferred* by the claim (``_sqlite_tx``): kept with what it takes to send them,
  and resolved many at once (``held_lines``: one read of every row of ``idclaims``,
  its arrays tested against the deferred keys in C, about 45 ns a key held), once
  the keys held grew by ``RESOLVE_GROWTH`` since the last time (so each key is read
  about 1 / ``RESOLVE_GROWTH`` times over the job, whatever its size) and once the
  input was read to its end. The first line wins, as before; the deferred requests
  that are new are sent later, from the spool;
- the filter is rebuilt from ``idclaims`` (and the deferred keys) when the ledger
  opens. The runs of keys of a state file of schema 4 (tables ``ids0`` ...,
  ``runs``) stay, read as they are (a resolution looks the keys up in them), never
  merged.

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
  the mode ends for good: the ids are hashed into rows of ``idclaims``, the filter
  is built, and the index works as above from then on.

Every change is part of the claim's transaction: a crash leaves the keys, the
deferred requests and the spool as the last commit.
"""

from __future__ import annotations

import functools
import hashlib
import struct
import sys
from array import array
from bisect import bisect_left, bisect_right
from itertools import chain, islice
from typing import TYPE_CHECKING

import msgspec

from ._files import transaction

if TYPE_CHECKING:
    import sqlite3
    from collections.abc import Collection, Iterable, Sequence

    #: keys of ids: their ``h`` and their ``c``, one of each per id, in the ids' order
    Keys = tuple[Sequence[int], Sequence[int]]

__all__ = (
    "DEFERRED_SCHEMA",
    "IDRUNS_SCHEMA",
    "IDS_SCHEMA",
    "CHUNK",
    "IDS_TABLES",
    "LATE_SHARE",
    "LEVELS",
    "RESOLVE_FLOOR",
    "RESOLVE_GROWTH",
    "TOP_KEY",
    "IdIndex",
    "KeyFilter",
    "key_of",
    "keys_of",
)

#: levels of runs of keys in a state file of schema 3 or 4 (read as they are, never
#: merged any more: schema 5 keeps keys in ``idclaims``)
LEVELS = 8
IDS_TABLES = tuple(f"ids{level}" for level in range(LEVELS))
#: ``cl``: the key's ``c`` and the id's first source line as one integer, ``c << 32 |
#: line`` (a line number stays below 2^32). New files have the tables, empty.
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
#: ids in any order (schema 5): a claim's new keys as one row of packed arrays
#: (``h`` int64, ``c`` int16, the first line int32: 14 bytes a key), never sorted
#: nor merged; ``deferred``: the requests whose key the filter could not rule out,
#: waiting to be resolved in bulk (``IdIndex.held_lines``), with what it takes to send
#: them (as the spool's rows; copies of one id wait together, the first line wins)
DEFERRED_SCHEMA = (
    "CREATE TABLE idclaims(seq INTEGER PRIMARY KEY, size INTEGER NOT NULL, h BLOB NOT NULL, "
    "c BLOB NOT NULL, line BLOB NOT NULL);\n"
    "CREATE TABLE deferred(seq INTEGER PRIMARY KEY, h INTEGER NOT NULL, c INTEGER NOT NULL, "
    "custom_id TEXT NOT NULL, line INTEGER NOT NULL, offset INTEGER NOT NULL, "
    "length INTEGER NOT NULL, raw BLOB, attempt INTEGER NOT NULL);\n"
    "CREATE INDEX deferred_key ON deferred(h, c);\n"
)
#: resolve the deferred requests in a claim once the keys held grew by this share
#: since the last time, and by ``RESOLVE_FLOOR`` at the least: a resolution reads
#: every key held once (about 45 ns each), so each key is read about 1 / share times
#: over the job, whatever its size; the last ones are resolved at the input's end
RESOLVE_GROWTH = 0.25
RESOLVE_FLOOR = 100_000
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
_KEY = struct.Struct("<qh")
_unpack = _KEY.unpack
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


def keys_of(custom_ids: Collection[str]) -> Keys:
    """``key_of`` of each id, as the ids' ``h`` and their ``c``: one loop for the
    digests, then their keys unpacked ``_UNPACK_RECORDS`` at a time (no tuple, no
    call per id)."""
    copy = _EMPTY.copy
    digests: list[bytes] = []
    append = digests.append
    for raw in map(str.encode, custom_ids):
        h = copy()
        h.update(raw)
        append(h.digest())
    packed = b"".join(digests)
    flat: list[int] = []
    whole = len(packed) - len(packed) % _UNPACK_BYTES
    for at in range(0, whole, _UNPACK_BYTES):
        flat += _unpack_records(packed, at)
    flat += chain.from_iterable(_KEY.iter_unpack(packed[whole:]))
    return flat[0::2], flat[1::2]


#: digests unpacked by one call: a ``Struct`` of this many keys takes about 33 KB (one of
#: a whole claim's, 10,000, would take 660 KB)
_UNPACK_RECORDS = 512
_UNPACK_BYTES = 10 * _UNPACK_RECORDS
_unpack_records = struct.Struct("<" + "qh" * _UNPACK_RECORDS).unpack_from


#: bits of filter per key (false positives cost a lookup in every run)
_BITS_PER_KEY = 12
#: keys a filter is made for at the least (1.5 MB)
_MIN_KEYS = 1 << 20


@functools.cache
def _masks() -> array[int]:
    """The filter's bit masks, up to four bits set in each (four in 91%), chosen by
    the top 16 bits of ``h`` (``h >> 48``, -32768 to 32767: an index from the end
    when negative): one lookup instead of four shifts per key (a third less time).
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
                words[h % n] |= masks[h >> 48]
            self._count += added

    def _add(self, h: int) -> None:
        if self._count >= self._capacity:
            self._grow(2 * self._capacity)
        words, n = self._filters[-1]
        words[h % n] |= self._masks[h >> 48]
        self._count += 1

    def holds(self, h: int) -> bool:
        """Whether ``h`` may have been added (never a false no)."""
        bits = self._masks[h >> 48]
        return any(words[h % n] & bits == bits for words, n in self._filters)

    def known(self, hs: Sequence[int]) -> list[int]:
        """The indices of the keys that may have been added before; every other key
        is added now (so a second copy within ``hs`` counts as maybe known)."""
        maybe: list[int] = []
        if len(self._filters) == 1 and self._count + len(hs) <= self._capacity:
            words, n = self._filters[0]  # the common case, inlined
            masks = self._masks
            for i, h in enumerate(hs):
                j = h % n
                word = words[j]
                new = word | masks[h >> 48]
                if new == word:  # every bit set already (a tenth less than ``&``, ``==``)
                    maybe.append(i)
                else:
                    words[j] = new
            self._count += len(hs) - len(maybe)
            return maybe
        filters = self._filters
        for i, h in enumerate(hs):
            bits = self._masks[h >> 48]
            for words, n in filters:
                if words[h % n] & bits == bits:
                    maybe.append(i)
                    break
            else:
                self._add(h)
        return maybe


_BIG_ENDIAN = sys.byteorder == "big"


def _packed(typecode: str, values: Iterable[int]) -> bytes:
    """``values`` as a packed little-endian array (a state file moves between machines)."""
    out = array(typecode, values)
    if _BIG_ENDIAN:
        out.byteswap()
    return out.tobytes()


def _unpacked(typecode: str, data: bytes) -> array[int]:
    out = array(typecode)
    out.frombytes(data)
    if _BIG_ENDIAN:
        out.byteswap()
    return out


def _keys_in(data: bytes) -> Sequence[int]:
    """The ``h`` of a row of ``idclaims``, in place where the machine is little-endian."""
    return _unpacked("q", data) if _BIG_ENDIAN else memoryview(data).cast("q")


def _held(c: sqlite3.Connection) -> tuple[int, int]:
    """The number of ids the job holds (in runs of keys, ``idruns`` and ``idlate``),
    and of those in ``idlate``."""
    row = c.execute(
        "SELECT (SELECT coalesce(sum(size), 0) FROM runs) + "
        "(SELECT coalesce(sum(size), 0) FROM idruns) + "
        "(SELECT coalesce(sum(size), 0) FROM idclaims), (SELECT count(*) FROM idlate)"
    ).fetchone()
    return int(row[0]) + int(row[1]), int(row[1])


class IdIndex:
    """The job's ids: while they go up, in order (``idruns``); else their keys in a row
    per claim (``idclaims``) and a filter in memory (see module).

    While the job's ids go up (string order: ``r-000000001``, ...), an id above
    ``top``, the greatest id held, is new by one comparison: the index keeps no
    filter (``filter`` is None), hashes nothing, stores a claim's new ids in rows of
    ``idruns`` (or ``idlate``, the few not above ``top``), and looks up only a
    claim's ids that are not above ``top`` (retries, lines held back and released
    later): one seek each, in ``idruns`` and ``idlate``. Once ``idlate`` holds more
    than ``LATE_SHARE`` of the ids, the mode ends: the ids are hashed into rows of
    ``idclaims`` and the filter is built (as an open does), and the index keeps it
    from then on. ``top`` is kept in the meta row ``ids_top`` with the number of ids
    held when it was written, so that a reopen trusts it only if nothing else added
    ids since.

    Once the ids are hashed, nothing is looked up when claimed: the filter rules out
    most keys (new: stored as the claim's row), and the others (``lookup``'s
    ``maybe``) are the caller's to defer. ``held_lines`` finds which of many keys
    the job holds, by one read of every row (``due``: when the keys held grew by
    ``RESOLVE_GROWTH`` since the last time).
    """

    __slots__ = (
        "_below",
        "_capacity",
        "_held",
        "_late",
        "_next",
        "_stale",
        "filter",
        "top",
    )

    def __init__(self) -> None:
        self.filter: KeyFilter | None = None
        #: the greatest id held while the job's claims go up; None once one did not
        self.top: str | None = None
        self._capacity = 0
        self._stale = False
        #: ids held, and of them in ``idlate``, while the ids go up; keys held after
        self._held = 0
        self._late = 0
        #: keys held at which the deferred requests are due to be resolved
        self._next = 0
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
        """Read ``top``, or build the filter from the keys held and deferred (when the
        ledger opens): sized for ``capacity`` ids, or twice the ids held if more."""
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
        ``idlate`` into rows of ``idclaims`` (about ten thousand a row: memory stays
        that of a claim), build the filter of every key held (the runs of a file of
        schema 4 too) and deferred (a copy of a deferred id must stay a positive)."""
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
                self.hold(c, *keys_of(batch[0]), batch[1])
                batch = ([], [])
        for cid, line in c.execute("SELECT id, line FROM idlate"):
            batch[0].append(cid)
            batch[1].append(line)
            if len(batch[0]) >= 10 * CHUNK:
                self.hold(c, *keys_of(batch[0]), batch[1])
                batch = ([], [])
        if batch[0]:
            self.hold(c, *keys_of(batch[0]), batch[1])
        c.execute("DELETE FROM idruns")
        c.execute("DELETE FROM idlate")
        # sized as a fresh job's, for the requests its input is guessed to hold; for
        # twice the ids held once they pass that guess (a job of small requests). Not
        # twice the ids held always: a job resumed near its end would hold a filter
        # twice a fresh one's (29 MB instead of 17 at ten million)
        held = self._held = _held(c)[0]
        self._next = _due_at(held)
        self.filter = KeyFilter(self._capacity if held <= self._capacity else 2 * held)
        for table in IDS_TABLES:  # runs of a file of schema 4, read as they are
            self.filter.add(h for (h,) in c.execute(f"SELECT h FROM {table}"))
        for (hs,) in c.execute("SELECT h FROM idclaims"):
            self.filter.add(_keys_in(hs))
        self.filter.add(h for (h,) in c.execute("SELECT h FROM deferred"))

    def lookup(
        self, c: sqlite3.Connection, ids: Sequence[str]
    ) -> tuple[dict[str, int], Keys | None, list[int]]:
        """While the ids go up: the first line of each of ``ids`` the job holds (only
        the ids not above ``top`` are looked up; ``top`` moves up), no keys, nothing
        maybe. Once the mode has ended: nothing looked up, the keys of ``ids``, and
        the indices of those the filter could not rule out (``maybe``; it learns the
        others, which are new). The new ones must then be stored by ``insert``, in the
        same transaction."""
        self._fresh(c)
        top = self.top
        if top is not None:
            self._below = top
            if not ids:
                return {}, None, []
            high = max(ids)
            if min(ids) > top:
                self.top = high
                return {}, None, []
            found = self._ordered_lookup(c, sorted({cid for cid in ids if cid <= top}))
            self.top = max(top, high)
            return found, None, []
        assert self.filter is not None
        keys = keys_of(ids)
        return {}, keys, self.filter.known(keys[0])

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
        """Those of ``ids`` the job may hold: while the ids go up, exactly; after, those
        the filter does not rule out (an id it does not hold passes about once in a
        hundred). The filter is not changed."""
        wanted = sorted(set(ids))
        if not wanted:
            return set()
        self._fresh(c)
        if self.top is not None:
            top = self.top
            return set(self._ordered_lookup(c, [cid for cid in wanted if cid <= top]))
        assert self.filter is not None
        holds = self.filter.holds
        return {cid for cid, h in zip(wanted, keys_of(wanted)[0], strict=True) if holds(h)}

    def held_lines(self, c: sqlite3.Connection, wanted: set[int]) -> dict[tuple[int, int], int]:
        """The first line of each key held whose ``h`` is in ``wanted``: one read of
        every row of ``idclaims`` (its ``h`` array tested against ``wanted`` in C,
        about 45 ns a key), and the runs of a file of schema 4 looked up."""
        found: dict[tuple[int, int], int] = {}
        if not wanted:
            return found
        matched: list[int] = []
        for seq, hb in c.execute("SELECT seq, h FROM idclaims ORDER BY seq"):
            # tested in place (no copy of the row: a resolution reads every row)
            if not wanted.isdisjoint(_keys_in(hb)):
                matched.append(seq)
        for seq in matched:  # the few rows holding some of them
            hb, cb, lb = c.execute(
                "SELECT h, c, line FROM idclaims WHERE seq = ?", (seq,)
            ).fetchone()
            hs, cs, lines = _unpacked("q", hb), _unpacked("h", cb), _unpacked("i", lb)
            for h in wanted.intersection(hs):
                i = hs.index(h)
                while i >= 0:  # each place of h in the row (another id may share it)
                    found.setdefault((h, cs[i]), lines[i])
                    try:
                        i = hs.index(h, i + 1)
                    except ValueError:
                        i = -1
        if c.execute("SELECT 1 FROM runs LIMIT 1").fetchone() is not None:
            for key, line in self._probe_h(c, wanted).items():
                found.setdefault(key, line)
        return found

    def due(self) -> bool:
        """Whether the deferred requests are due to be resolved (see ``held_lines``)."""
        return self.filter is not None and self._held >= self._next

    def resolved(self) -> None:
        """The deferred requests were resolved now: the next time is further."""
        self._next = _due_at(self._held)

    @staticmethod
    def _probe_h(c: sqlite3.Connection, wanted: set[int]) -> dict[tuple[int, int], int]:
        """The first line of each key of the runs (a file of schema 4) whose ``h`` is
        in ``wanted``."""
        probe = _encode(sorted(wanted))
        found: dict[tuple[int, int], int] = {}
        for run, level in c.execute("SELECT run, level FROM runs ORDER BY run").fetchall():
            rows = c.execute(
                f"SELECT i.h, i.cl FROM json_each(?) AS j CROSS JOIN {IDS_TABLES[level]} AS i "
                "ON i.run = ? AND i.h = j.value",
                (probe, run),
            )
            for h, cl in rows:
                found.setdefault((h, cl >> 32), cl & _M32)
        return found

    def insert(
        self,
        c: sqlite3.Connection,
        ids: list[str],
        lines: list[int],
        keys: Keys | None,
    ) -> None:
        """Store new ids (``lines``: the line of each): while they go up (``keys``
        None), the ids themselves, and end that mode when too many came late; else
        their ``keys`` as one row of ``idclaims``."""
        if not ids:
            return
        if self.top is not None:
            self._insert_ordered(c, ids, lines)
            if self._late > _LATE_FLOOR and self._late > LATE_SHARE * self._held:
                self._build(c)  # the ids do not go up: hash them all, once
            return
        assert keys is not None
        self.hold(c, *keys, lines)

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

    def hold(
        self, c: sqlite3.Connection, hs: Iterable[int], cs: Iterable[int], lines: Iterable[int]
    ) -> None:
        """Keys held from now on (``h``, ``c``, their lines), as one row of ``idclaims``
        (once the ids are hashed)."""
        row = (_packed("q", hs), _packed("h", cs), _packed("i", lines))
        size = len(row[0]) // 8
        c.execute("INSERT INTO idclaims(size, h, c, line) VALUES (?, ?, ?, ?)", (size, *row))
        self._held += size


def _due_at(held: int) -> int:
    """Keys held at which deferred requests are resolved next, ``held`` held now."""
    return int(held * (1 + RESOLVE_GROWTH)) + RESOLVE_FLOOR
