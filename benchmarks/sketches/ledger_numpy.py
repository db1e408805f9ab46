"""A sketch, not the product: the index of random ids with numpy, the ledger alone.

    pip install numpy   # not a dependency of the pipeline
    python benchmarks/sketches/ledger_numpy.py 10000000

What native code would save (issue 17: random ids cost 1.28x ordered ones, where
1.15x is the target). Claims of 10,000 random 32-hex ids, as `ledger_bench.py` makes
them; per claim, the same steps as ``pipeline.ledger._sqlite_ids`` with the per-key
Python done by numpy: BLAKE2b of each id (still a Python loop), the blocked Bloom
filter (the same masks, gathered and scattered as arrays), lookups of its positives in
the runs, the claim's run written as two packed arrays (one row, sorted by argsort),
and every 32 runs a merge into a B-tree run of level 1 (as today, JSON into SQLite).
Prints CPU µs per request of each part. Left out, so it is not a drop-in: keys that
share ``h`` (1 in 10^11 claims), ids that go up, the reopen, several levels.
"""

from __future__ import annotations

import hashlib
import os
import random
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

import msgspec
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pipeline.ledger._sqlite_ids import _masks  # noqa: E402

CLAIM = 10_000
FANOUT = 32
KEY = np.dtype([("h", "<i8"), ("c", "<i2")])
EMPTY = hashlib.blake2b(digest_size=10)
encode = msgspec.json.encode


class Index:
    def __init__(self, c: sqlite3.Connection, capacity: int) -> None:
        self.c = c
        self.n = max(1024, capacity * 12 // 64)
        self.words = np.zeros(self.n, dtype=np.uint64)
        self.masks = np.frombuffer(_masks().tobytes(), dtype=np.uint64)
        #: level-0 runs held in memory too (about 5 MB at most): their lookups
        self.level0: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        self.parts = dict.fromkeys(("hash", "filter", "lookups", "run", "merge"), 0.0)

    def claim(self, ids: list[str], lines: list[int]) -> int:
        """Store the ids' keys; how many were found held (none here: all new)."""
        clock, parts = time.process_time, self.parts
        t0 = clock()
        copy, digests = EMPTY.copy, []
        for cid in ids:
            state = copy()
            state.update(cid.encode())
            digests.append(state.digest())
        keys = np.frombuffer(b"".join(digests), dtype=KEY)
        h, c = keys["h"].copy(), keys["c"].astype(np.int64)
        t1 = clock()
        j = h.view(np.uint64) % np.uint64(self.n)
        bits = self.masks[(h >> 40) & 0xFFFF]
        maybe = np.nonzero((self.words[j] & bits) == bits)[0]
        np.bitwise_or.at(self.words, j, bits)
        t2 = clock()
        found = self._lookups(h[maybe]) if len(maybe) else 0
        t3 = clock()
        order = np.argsort(h, kind="stable")
        hs, cls = h[order], ((c << 32) | np.asarray(lines, dtype=np.int64))[order]
        run = self.c.execute("INSERT INTO runs(level, size) VALUES (0, ?)", (len(ids),)).lastrowid
        assert run is not None
        self.c.execute("INSERT INTO level0 VALUES (?, ?, ?)", (run, hs.tobytes(), cls.tobytes()))
        self.level0[run] = (hs, cls)
        t4 = clock()
        if len(self.level0) >= FANOUT:
            self._merge()
        t5 = clock()
        for name, dt in zip(parts, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4), strict=True):
            parts[name] += dt
        return found

    def _lookups(self, probes: np.ndarray) -> int:
        found = 0
        for hs, _ in self.level0.values():
            at = np.searchsorted(hs, probes)
            at[at >= len(hs)] = 0
            found += int(np.count_nonzero(hs[at] == probes))
        probe = encode(sorted(set(probes.tolist())))
        for (run,) in self.c.execute("SELECT run FROM runs WHERE level = 1").fetchall():
            rows = self.c.execute(
                "SELECT i.h FROM json_each(?) AS j CROSS JOIN ids1 AS i "
                "ON i.run = ? AND i.h = j.value",
                (probe, run),
            )
            found += len(rows.fetchall())
        return found

    def _merge(self) -> None:
        hs = np.concatenate([v[0] for v in self.level0.values()])
        cls = np.concatenate([v[1] for v in self.level0.values()])
        order = np.argsort(hs, kind="stable")
        members = dict(zip(hs[order].tolist(), cls[order].tolist(), strict=True))
        run = self.c.execute("INSERT INTO runs(level, size) VALUES (1, ?)", (len(hs),)).lastrowid
        self.c.execute(
            "INSERT INTO ids1 SELECT ?, CAST(key AS INTEGER), value FROM json_each(?)",
            (run, encode(members)),
        )
        self.c.execute("DELETE FROM level0")
        self.c.execute("DELETE FROM runs WHERE level = 0")
        self.level0.clear()


def main(total: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        c = sqlite3.connect(os.path.join(tmp, "state.db"), isolation_level=None)
        for pragma in ("journal_mode=WAL", "synchronous=NORMAL", "cache_size=-4096"):
            c.execute(f"PRAGMA {pragma}")
        c.executescript(
            "CREATE TABLE runs(run INTEGER PRIMARY KEY, level INTEGER NOT NULL, size INTEGER);"
            "CREATE TABLE level0(run INTEGER PRIMARY KEY, h BLOB NOT NULL, cl BLOB NOT NULL);"
            "CREATE TABLE ids1(run INTEGER NOT NULL, h INTEGER NOT NULL, cl INTEGER NOT NULL,"
            " PRIMARY KEY (run, h, cl)) WITHOUT ROWID;"
        )
        index = Index(c, int(total * 1.1))
        rng = random.Random(7)
        spent, commits = [], 0.0
        for k in range(total // CLAIM):
            ids = [f"{rng.getrandbits(128):032x}" for _ in range(CLAIM)]
            lines = list(range(k * CLAIM + 1, (k + 1) * CLAIM + 1))
            start = time.process_time()
            c.execute("BEGIN IMMEDIATE")
            index.claim(ids, lines)
            before_commit = time.process_time()
            c.execute("COMMIT")
            commits += time.process_time() - before_commit
            spent.append(time.process_time() - start)
        c.close()
    tenth = max(1, len(spent) // 10)
    us = 1e6 / CLAIM
    print(
        f"{total:,} random ids: {sum(spent) / len(spent) * us:.2f} µs per request "
        f"(first tenth {sum(spent[:tenth]) / tenth * us:.2f}, "
        f"last {sum(spent[-tenth:]) / tenth * us:.2f})"
    )
    for name, seconds in {**index.parts, "commits": commits}.items():
        print(f"  {name:8s} {seconds / total * 1e6:.2f}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
