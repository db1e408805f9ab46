"""A job's cancel in the SQLite ledger: the transaction bodies of
``request_cancel``, ``mark_canceled``, ``resume_canceled`` and of holding canceled
requests (plain functions of a connection, run inside ``SQLiteLedger._run``'s one
transaction), and ``request_cancel(path)``, which records the intent from another
process while a worker holds the job.

The cancel lives in one ``meta`` row (``CANCEL_KEY``): absent, ``requested``, then
``canceled``. Recording the intent is a single-row write: SQLite serialises it
with the worker's own transactions (WAL; a busy wait of up to ``_BUSY_MS``), so it
needs no job lock, and the worker notices it at its next check
(``cancel_requested``, once per poll interval). Requests whose result was canceled
by the job's cancel are held in the table ``canceled``: neither written nor
spooled (a collected batch does not spool them as missing, and ``unwritten`` does
not owe them), until ``resume_canceled`` spools them.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from .._errors import LedgerError
from ._files import transaction
from ._sqlite_schema import CANCEL_KEY, cancel_state, check_meta, connect, meta_value, table_names
from ._sqlite_tx import done_ids, members_of, spool_members

if TYPE_CHECKING:
    import os
    from collections.abc import Sequence

    from ._base import CancelState

__all__ = (
    "hold_canceled",
    "mark_canceled",
    "request_cancel",
    "request_cancel_tx",
    "resume_canceled",
)

#: How long ``request_cancel(path)`` waits for a worker's transaction to end, in ms.
_BUSY_MS = 30_000


def request_cancel_tx(c: sqlite3.Connection) -> CancelState | None:
    """Record the intent to cancel, unless the job finished or a cancel is recorded
    already; the job's cancel state after (None: the job had finished)."""
    state = cancel_state(c)
    if state is not None:
        return state
    if meta_value(c, "finished"):
        return None
    c.execute("INSERT INTO meta VALUES (?, 'requested')", (CANCEL_KEY,))
    return "requested"


def mark_canceled(c: sqlite3.Connection) -> int:
    """The cancel is complete; how many requests it holds as canceled."""
    c.execute("INSERT OR REPLACE INTO meta VALUES (?, 'canceled')", (CANCEL_KEY,))
    row = c.execute("SELECT count(*) FROM canceled").fetchone()
    return int(row[0])


def resume_canceled(c: sqlite3.Connection) -> int:
    """Spool the requests held as canceled (same attempt) and clear the cancel; how
    many. The spool keeps input order (by source line)."""
    moved = c.execute(
        "INSERT OR IGNORE INTO spool(h, c, custom_id, line, offset, length, raw, attempt) "
        "SELECT h, c, custom_id, line, offset, length, raw, attempt FROM canceled ORDER BY line"
    ).rowcount
    c.execute("DELETE FROM canceled")
    c.execute("DELETE FROM meta WHERE key = ?", (CANCEL_KEY,))
    return int(moved)


def hold_canceled(c: sqlite3.Connection, local_id: int, custom_ids: Sequence[str]) -> None:
    """Hold these requests of batch ``local_id`` as canceled (not written, not
    spooled): their results were canceled by the job's cancel."""
    wanted = set(custom_ids) - done_ids(c, local_id)
    if wanted:
        members = [m for m in members_of(c, local_id) if m[0] in wanted]
        spool_members(c, local_id, members, 0, table="canceled")


def _request_cancel_sync(path: Path) -> CancelState | None:
    if not path.is_file():
        raise LedgerError(str(path), "does not exist")
    conn = connect(path, readonly=False)
    try:
        conn.execute(f"PRAGMA busy_timeout = {_BUSY_MS}")
        check_meta(conn, table_names(conn), str(path))
        with transaction(conn):
            state = request_cancel_tx(conn)
    except sqlite3.DatabaseError as exc:
        raise LedgerError(str(path), f"cannot record the cancel ({exc})") from exc
    finally:
        conn.close()
    return state


async def request_cancel(path: str | os.PathLike[str]) -> CancelState | None:
    """Record in the state file at ``path`` that its job is to be canceled, without
    the job's lock (a worker may hold it: it notices at its next poll and completes
    the cancel). The job's cancel state after: "requested", "canceled" (done
    already), or None when the job had finished (nothing to cancel)."""
    return await anyio.to_thread.run_sync(_request_cancel_sync, Path(path))
