"""What the ledger's tests share: the job, entries and rejects of numbered lines, and
how many custom_ids a state file holds (also imported by ``tests/cli`` and by the
subprocesses some tests start)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.ledger import JobSpec
from pipeline.stages import Entry, Reject, RejectError

if TYPE_CHECKING:
    import sqlite3

JOB = JobSpec(
    input_path="in.jsonl", input_fingerprint="abc", output_path="out.jsonl", rejects_path=None
)


def entry(n: int, *, attempt: int = 1, cid: str | None = None, iterable: bool = False) -> Entry:
    """Entry of input line ``n`` (100 bytes a line, starting at (n-1)*100)."""
    custom_id = cid or f"req-{n}"
    raw = b'{"custom_id":"' + custom_id.encode() + b'","params":{}}'
    if iterable:
        return Entry(line=n, custom_id=custom_id, raw=raw, attempt=attempt)
    return Entry(
        line=n, custom_id=custom_id, raw=raw, offset=(n - 1) * 100, end=n * 100, attempt=attempt
    )


def held_tables(conn: sqlite3.Connection) -> dict[str, int]:
    """Ids a state file holds in each kind of table: keys (rows of claims, and runs
    of a file of schema 4), rows of ids in order, and ids that came late."""
    counts = conn.execute(
        "SELECT (SELECT coalesce(sum(size), 0) FROM runs) + "
        "(SELECT coalesce(sum(size), 0) FROM idclaims), "
        "(SELECT coalesce(sum(size), 0) FROM idruns), (SELECT count(*) FROM idlate)"
    ).fetchone()
    return dict(zip(("keys", "in order", "late"), counts, strict=True))


def held_ids(conn: sqlite3.Connection) -> int:
    """How many custom_ids the state file holds, in all of them."""
    return sum(held_tables(conn).values())


def reject(n: int, message: str = "bad json") -> Reject:
    return Reject(line=n, custom_id=None, error=RejectError("invalid_request_error", message))
