"""Reading a job's rejects by type from its SQLite state file, read-only and without
the job's lock (like ``read_status``): for the metrics and the job page."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread
import msgspec

from .._errors import LedgerError
from ._sqlite_schema import check_meta, connect, table_names

if TYPE_CHECKING:
    import os

__all__ = ("RejectSample", "RejectType", "read_rejects")

#: reject lines shown per type
DEFAULT_FIRST = 3


class RejectSample(msgspec.Struct, frozen=True):
    """One reject: its input line, custom_id (if it had one) and message."""

    line: int
    custom_id: str | None
    message: str


class RejectType(msgspec.Struct, frozen=True):
    """The rejects of one error type: how many, and the first few."""

    type: str
    count: int
    first: list[RejectSample]


def _read_rejects_sync(path: Path, first: int) -> tuple[int, list[RejectType]]:
    if not path.is_file():
        raise LedgerError(str(path), "does not exist")
    conn = connect(path, readonly=True)
    try:
        check_meta(conn, table_names(conn), str(path))
        conn.execute("BEGIN")  # one consistent snapshot
        total = conn.execute("SELECT count(*) FROM rejects").fetchone()[0]
        kinds = conn.execute(
            "SELECT type, count(*) AS n FROM rejects GROUP BY type ORDER BY n DESC, type"
        ).fetchall()
        found = []
        for kind, count in kinds:
            rows = conn.execute(
                "SELECT line, custom_id, message FROM rejects WHERE type = ? ORDER BY seq LIMIT ?",
                (kind, first),
            ).fetchall()
            found.append(RejectType(kind, count, [RejectSample(*row) for row in rows]))
        conn.execute("COMMIT")
    except sqlite3.DatabaseError as exc:
        raise LedgerError(str(path), f"not a usable pipeline state file ({exc})") from exc
    finally:
        conn.close()
    return total, found


async def read_rejects(
    path: str | os.PathLike[str], *, first: int = DEFAULT_FIRST
) -> tuple[int, list[RejectType]]:
    """The number of rejects in the state file at ``path`` and, per error type (most
    frequent first), their count and the first ``first`` of them."""
    return await anyio.to_thread.run_sync(_read_rejects_sync, Path(path), first)
