"""A sketch, not the product: the index of random ids with no sorted runs, the filter's
positives resolved later, in bulk; the ledger alone.

    python benchmarks/sketches/ledger_deferred.py 10000000                 # the sketch
    python benchmarks/sketches/ledger_deferred.py 10000000 --growth 0.25   # resolve more often

(Built since as the ledger's schema 5, ``pipeline/ledger/_sqlite_ids.py``: the sketch
stays as the measurement that chose it. Its ``--today`` mode, the same claims through
the index of schema 4, went with that index; its figures are in RESULTS.md.)

What a design without sorted runs would cost in pure Python (issue 17: random ids cost
1.28x ordered ones, where 1.15x is the target). Claims of 10,000 random 32-hex ids, as
``ledger_bench.py`` makes them, one id in a thousand a copy of an earlier one. Per
claim, with today's ``keys_of`` and ``KeyFilter``:

- the ids are hashed and the filter rules out most of them, as today;
- the keys the filter rules out are new: they go into the database as one row per
  claim (packed ``h``, ``c`` and line arrays, 14 bytes a key), no sort, no B-tree
  of keys, no merge;
- the filter's positives (about 1.2%, and every real duplicate) are not looked up:
  they are *deferred* (a row each, as a spool row would be), and resolved together
  once the keys held grew by ``GROWTH`` since the last time (and at the end): one
  scan of every claim's row, in C (``set.isdisjoint`` and ``set.intersection`` over
  the packed arrays), finds which of them the job holds; the others are new and are
  held from then on (the first line wins among copies).

Each key is scanned ``1 / GROWTH`` times on average (about 45 ns each), whatever the
job's size; the deferred requests would be sent later, in batches of their own.
Prints CPU µs per request by part and checks that exactly the planted duplicates
were found.

Left out, so it is not a drop-in: the claim's contract would change (a claim would
return its deferred requests, which the runner spools and sends later), the reopen
(the filter is rebuilt from the claims' rows and the deferred keys), lookups of
retries (they would find their own row in the spool, not in the index).
"""

from __future__ import annotations

import os
import random
import sqlite3
import sys
import tempfile
import time
from array import array
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.ledger._sqlite_ids import KeyFilter, keys_of  # noqa: E402

CLAIM = 10_000
#: resolve the deferred keys once the keys held grew by this share (``--growth``)
GROWTH = 0.5
#: one id in this many is a copy of an earlier one
COPY_EVERY = 1000


class Deferred:
    """Claims held as packed rows; the filter's positives resolved in bulk."""

    def __init__(self, c: sqlite3.Connection, capacity: int) -> None:
        self.c = c
        self.filter = KeyFilter(capacity)
        self.held = 0
        self.next_resolve = CLAIM * 8
        self.pending = 0
        #: the most requests deferred at once (they wait in the spool)
        self.most = 0
        self.found = 0
        self.parts = dict.fromkeys(("hash", "filter", "write", "defer", "resolve"), 0.0)

    def claim(self, ids: list[str], lines: list[int]) -> None:
        clock, parts = time.process_time, self.parts
        t0 = clock()
        keys = list(zip(*keys_of(ids), strict=True))  # (h, c) pairs
        t1 = clock()
        hs = [k[0] for k in keys]
        maybe = self.filter.known(hs)
        t2 = clock()
        if maybe:
            later = set(maybe)
            kept = [i for i in range(len(ids)) if i not in later]
            self._write([keys[i] for i in kept], [lines[i] for i in kept])
        else:
            self._write(keys, lines)
        t3 = clock()
        if maybe:
            self.c.executemany(
                "INSERT INTO deferred VALUES (?, ?, ?)",
                [(keys[i][0], keys[i][1], lines[i]) for i in maybe],
            )
            self.pending += len(maybe)
            self.most = max(self.most, self.pending)
        t4 = clock()
        if self.held >= self.next_resolve:
            self.resolve()
        t5 = clock()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[name] += dt

    def _write(self, keys: list[tuple[int, int]], lines: list[int]) -> None:
        hs = array("q", [k[0] for k in keys])
        cs = array("h", [k[1] for k in keys])
        self.c.execute(
            "INSERT INTO claims(h, c, line) VALUES (?, ?, ?)",
            (hs.tobytes(), cs.tobytes(), array("I", lines).tobytes()),
        )
        self.held += len(hs)

    def resolve(self) -> None:
        """Which deferred keys the job holds (a duplicate: found), in one scan; the
        others are held from now on, the first line of each key winning."""
        rows = self.c.execute("SELECT h, c, line FROM deferred ORDER BY line").fetchall()
        self.c.execute("DELETE FROM deferred")
        self.pending = 0
        if not rows:
            self.next_resolve = int(self.held * (1 + GROWTH))
            return
        wanted = {h for h, _, _ in rows}
        held: set[tuple[int, int]] = set()
        for hb, cb in self.c.execute("SELECT h, c FROM claims"):
            hs = array("q")
            hs.frombytes(hb)
            if wanted.isdisjoint(hs):
                continue
            cs = array("h")
            cs.frombytes(cb)
            for h in wanted.intersection(hs):
                i = hs.index(h)
                while True:  # every place of h in the row (another id may share it)
                    held.add((h, cs[i]))
                    try:
                        i = hs.index(h, i + 1)
                    except ValueError:
                        break
        new_keys: list[tuple[int, int]] = []
        new_lines: list[int] = []
        for h, c, line in rows:
            if (h, c) in held:
                self.found += 1  # a copy of a held id: rejected, naming its first line
            else:
                held.add((h, c))
                new_keys.append((h, c))
                new_lines.append(line)
        if new_keys:
            self._write(new_keys, new_lines)
            self.filter.add(h for h, _ in new_keys)
        self.next_resolve = int(self.held * (1 + GROWTH))


def main(total: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        c = sqlite3.connect(os.path.join(tmp, "state.db"), isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-4096"):
            c.execute(f"PRAGMA {pragma}")
        c.executescript(
            "CREATE TABLE claims(run INTEGER PRIMARY KEY, h BLOB, c BLOB, line BLOB);"
            "CREATE TABLE deferred(h INTEGER, c INTEGER, line INTEGER);"
        )
        index = Deferred(c, int(total * 1.1))
        rng = random.Random(7)
        earlier: list[str] = []
        planted = 0
        spent, commits = [], 0.0
        for k in range(total // CLAIM):
            ids = [f"{rng.getrandbits(128):032x}" for _ in range(CLAIM)]
            if earlier:
                for j in range(0, CLAIM, COPY_EVERY):
                    ids[j] = rng.choice(earlier)
                    planted += 1
            earlier.extend(ids[1:CLAIM:COPY_EVERY])
            lines = list(range(k * CLAIM + 1, (k + 1) * CLAIM + 1))
            start = time.process_time()
            c.execute("BEGIN IMMEDIATE")
            index.claim(ids, lines)
            before_commit = time.process_time()
            c.execute("COMMIT")
            commits += time.process_time() - before_commit
            spent.append(time.process_time() - start)
        start = time.process_time()
        c.execute("BEGIN IMMEDIATE")
        index.resolve()
        c.execute("COMMIT")
        last = time.process_time() - start
        index.parts.setdefault("resolve", 0.0)
        index.parts["resolve"] += last
        size = os.path.getsize(os.path.join(tmp, "state.db"))
        c.close()
    tenth = max(1, len(spent) // 10)
    us = 1e6 / CLAIM
    print(
        f"deferred: {total:,} random ids: "
        f"{(sum(spent) + last) / total * 1e6:.2f} µs per request "
        f"(first tenth {sum(spent[:tenth]) / tenth * us:.2f}, "
        f"last {sum(spent[-tenth:]) / tenth * us:.2f}); "
        f"copies planted {planted:,}, found {index.found:,}; state {size / total:.1f} B/request"
        + f"; growth {GROWTH}, deferred at most {index.most:,}"
    )
    for name, seconds in {**index.parts, "commits": commits}.items():
        print(f"  {name:8s} {seconds / total * 1e6:.2f}")


if __name__ == "__main__":
    if "--growth" in sys.argv:
        GROWTH = float(sys.argv[sys.argv.index("--growth") + 1])
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
