"""What a claim would cost with another ledger layout: a measurement for a design
decision, not a benchmark of shipped code.

Today (schema v2) a claim inserts one row per request into ``requests`` (a rowid
table whose ``custom_id`` primary key is a second B-tree), after one ``json_each``
lookup of every claimed custom_id. The alternative measured here keeps only the
custom_id index per request (``WITHOUT ROWID``, the id and its batch) and one row per
batch holding its requests' source locations as one JSON array; a duplicate
custom_id shows up as an ``INSERT OR IGNORE`` that inserted fewer rows.

Both run the same pragmas as the ledger (its page size, WAL, ``synchronous=NORMAL``,
its page cache and checkpoint interval) and claim 10,000 sequential ids per transaction; the CPU time of the
claims alone is measured (``time.process_time``), the entries are built before.

    python benchmarks/ledger_layouts.py [--requests 1000000]
"""

from __future__ import annotations

import argparse
import sqlite3
import tempfile
import time
from operator import attrgetter
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    from pipeline.stages._items import Entry

BATCH = 10_000
_encode = msgspec.json.encode


def _connect(path: Path) -> sqlite3.Connection:
    from pipeline.ledger._sqlite import _CACHE_KIB, _CHECKPOINT_PAGES, _PAGE_SIZE

    conn = sqlite3.connect(path, isolation_level=None)
    for pragma in (
        f"page_size = {_PAGE_SIZE}",
        "journal_mode = WAL",
        "synchronous = NORMAL",
        f"cache_size = -{_CACHE_KIB}",
        f"wal_autocheckpoint = {_CHECKPOINT_PAGES}",
    ):
        conn.execute(f"PRAGMA {pragma}")
    return conn


def _batches(total: int) -> Iterator[list[Entry]]:
    from pipeline.stages._items import Entry

    for b in range(total // BATCH):
        first = b * BATCH
        yield [
            Entry(n + 1, f"req-{n:09d}", b"{}", n * 645, n * 645 + 645)
            for n in range(first, first + BATCH)
        ]


def per_request_rows(conn: sqlite3.Connection, total: int) -> float:
    """Schema v2's claim (``ledger._sqlite_tx._claim``, all ids new)."""
    conn.execute(
        "CREATE TABLE requests(custom_id TEXT PRIMARY KEY, loc TEXT NOT NULL, raw BLOB, "
        "attempt INTEGER NOT NULL, local_id INTEGER NOT NULL, state TEXT NOT NULL)"
    )
    spent = 0.0
    for local_id, entries in enumerate(_batches(total)):
        start = time.process_time()
        conn.execute("BEGIN IMMEDIATE")
        ids = [e.custom_id for e in entries]
        known = conn.execute(
            "SELECT r.custom_id FROM json_each(?) AS j JOIN requests AS r ON r.custom_id = j.value",
            (_encode(ids),),
        ).fetchall()
        assert not known
        fresh = {e.custom_id: (e.line, e.offset, e.end - e.offset) for e in entries}
        conn.execute(
            "INSERT INTO requests SELECT key, value, NULL, 1, ?, 'claimed' FROM json_each(?)",
            (local_id, _encode(fresh)),
        )
        conn.execute("COMMIT")
        spent += time.process_time() - start
    return spent


def per_batch_rows(conn: sqlite3.Connection, total: int) -> float:
    """The alternative: the custom_id index alone per request, locations per batch."""
    conn.execute(
        "CREATE TABLE ids(custom_id TEXT PRIMARY KEY, local_id INTEGER NOT NULL) WITHOUT ROWID"
    )
    conn.execute("CREATE TABLE claims(local_id INTEGER PRIMARY KEY, ids TEXT, locs TEXT)")
    location = attrgetter("line", "offset", "end")
    spent = 0.0
    for local_id, entries in enumerate(_batches(total)):
        start = time.process_time()
        conn.execute("BEGIN IMMEDIATE")
        ids = _encode([e.custom_id for e in entries])
        inserted = conn.execute(
            "INSERT OR IGNORE INTO ids SELECT value, ? FROM json_each(?)", (local_id, ids)
        ).rowcount
        assert inserted == len(entries)  # fewer: a duplicate, looked up then (rare)
        locs = _encode(list(map(location, entries)))
        conn.execute("INSERT INTO claims VALUES (?, ?, ?)", (local_id, ids, locs))
        conn.execute("COMMIT")
        spent += time.process_time() - start
    return spent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    args = parser.parse_args()
    layouts: dict[str, Callable[[sqlite3.Connection, int], float]] = {
        "per-request rows (v2)": per_request_rows,
        "per-batch rows": per_batch_rows,
    }
    for name, claim in layouts.items():
        with tempfile.TemporaryDirectory() as tmp:
            conn = _connect(Path(tmp) / "state.db")
            spent = claim(conn, args.requests)
            conn.close()
            size = sum(f.stat().st_size for f in Path(tmp).iterdir())
        per_request = spent / args.requests * 1e6
        print(
            f"{name:22} {args.requests:,}: {per_request:.2f} µs CPU per claimed request, "
            f"files {size / 1e6:.0f} MB"
        )


if __name__ == "__main__":
    main()
