"""The state file on disk: the job's lock, the integrity check, and what an SQLite
error means for a person.

The lock. One worker per job, however the state file is named: the lock is an
exclusive ``flock`` on the state file itself (its inode), not on a file next to it,
so a symlink, a hard link or a relative path reach the same lock, and no ``rm`` of a
side file can let a second worker in. The kernel releases it when the holder dies.
SQLite locks the same file with POSIX record locks, which are independent of
``flock`` (Linux) but have one trap: closing *any* descriptor of the file drops every
POSIX lock the process holds on it. So the lock's descriptor is opened before the
database connection and closed after it, and a second opener in the same process is
refused from a table of the files this process holds, before it opens anything.

The integrity check. ``PRAGMA quick_check`` at every open (a damaged page is found
before the job relies on it, not in the middle of a claim; it reads the whole file
once: 0.2 to 0.8 s per million requests held, measured), and the full ``integrity_check``
(which also compares every index with its table) on demand, for
``pipeline status --check``.

Errors. Every SQLite error becomes a ``LedgerError``: one line that names the state
file, says what went wrong and what to do (``ledger_error``).
"""

from __future__ import annotations

import fcntl
import os
import sqlite3
import threading
from contextlib import contextmanager
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from .._errors import LedgerError

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

__all__ = (
    "JobLock",
    "check_state",
    "damaged",
    "integrity_problems",
    "ledger_error",
    "lock_held",
    "transaction",
)


@contextmanager
def transaction(conn: sqlite3.Connection) -> Iterator[None]:
    """One write transaction (``BEGIN IMMEDIATE``): committed when the block ends,
    rolled back on any error."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        conn.rollback()
        raise
    conn.commit()


#: (st_dev, st_ino) of each state file this process holds the lock of -> its path
_held: dict[tuple[int, int], str] = {}
#: descriptors that must not be closed while the file's holder has its connection
#: open (closing one would drop the holder's POSIX locks): closed on its release
_parked: dict[tuple[int, int], list[int]] = {}
_guard = threading.Lock()

_IN_USE = (
    "in use by another process (a worker of this job is running); stop it first, or "
    "use `pipeline status` to watch it"
)


def _key(st: os.stat_result) -> tuple[int, int]:
    return (st.st_dev, st.st_ino)


class JobLock:
    """The exclusive lock of the job whose state file is at ``path`` (see the module
    docstring). ``acquire`` creates the file if need be (empty: a new SQLite
    database); ``release`` is idempotent; both are blocking (call them in a thread)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self._key: tuple[int, int] | None = None

    def acquire(self) -> None:
        """Take the lock, or raise ``LedgerError`` (in use, or cannot be opened)."""
        with _guard:
            try:
                if _key(os.stat(self.path)) in _held:
                    raise LedgerError(str(self.path), _IN_USE)
            except OSError:
                pass  # not there yet: the open below creates it, or says why not
            for _ in range(3):  # the path replaced between open and lock: again
                if self._try_acquire():
                    return
            raise LedgerError(str(self.path), "keeps being replaced while it is opened")

    def _try_acquire(self) -> bool:
        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise LedgerError(str(self.path), _open_advice(self.path, exc)) from exc
        key = _key(os.fstat(fd))
        if key in _held:  # reached through another name since the check above
            _parked.setdefault(key, []).append(fd)
            raise LedgerError(str(self.path), _IN_USE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LedgerError(str(self.path), _IN_USE) from None
        try:
            same = _key(os.stat(self.path)) == key
        except OSError:
            same = False
        if not same:  # removed or replaced before we locked it: lock what is there now
            os.close(fd)
            return False
        self._fd, self._key = fd, key
        _held[key] = str(self.path)
        return True

    def release(self) -> None:
        """Drop the lock (after the database connection is closed)."""
        with _guard:
            fd, key = self._fd, self._key
            self._fd = self._key = None
            if fd is None or key is None:
                return
            del _held[key]
            for parked in _parked.pop(key, []):
                os.close(parked)
            os.close(fd)  # closing the descriptor drops the flock


def lock_held(path: Path) -> bool:
    """Whether a worker holds the lock of the state file at ``path`` (probed without
    blocking, never held). Call it with no connection to the file open in this
    process (see the module docstring)."""
    with _guard:
        try:
            if _key(os.stat(path)) in _held:
                return True
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def _open_advice(path: Path, exc: OSError) -> str:
    reason = exc.strerror or str(exc)
    if not path.parent.is_dir():
        return f"cannot be created: its directory {path.parent} does not exist"
    if isinstance(exc, PermissionError):
        return (
            f"cannot be opened for writing ({reason}): a job writes its state as it "
            "goes; make the file and its directory writable, or copy it to a writable "
            "place and pass that path as --state (`pipeline status` reads it as it is)"
        )
    if isinstance(exc, IsADirectoryError):
        return "is a directory: give --state a file path"
    return f"cannot be opened ({reason})"


def integrity_problems(conn: sqlite3.Connection, *, full: bool = False) -> list[str]:
    """What SQLite's check finds wrong with the database (empty: nothing).
    ``quick_check`` reads every page and row; ``full`` adds ``integrity_check``'s
    comparison of every index with its table (slower)."""
    pragma = "integrity_check" if full else "quick_check"
    rows = [" ".join(str(row[0]).split()) for row in conn.execute(f"PRAGMA {pragma}(20)")]
    return [] if rows == ["ok"] else rows


def damaged(problems: list[str]) -> str:
    """What to say of a state file in which the integrity check found ``problems``."""
    more = f" and {len(problems) - 3} more" if len(problems) > 3 else ""
    return (
        f"is damaged ({'; '.join(problems[:3])}{more}); restore it from a backup, or "
        "remove it (and its -wal file) to start the job over"
    )


def _check_state_sync(path: Path) -> list[str]:
    if not path.is_file():
        raise LedgerError(str(path), "does not exist")
    try:
        conn = sqlite3.connect(f"{path.absolute().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error as exc:
        raise ledger_error(path, exc, opening=True) from exc
    try:
        return integrity_problems(conn, full=True)
    except sqlite3.Error as exc:
        return [str(exc)]  # too damaged for the check itself to run
    finally:
        conn.close()


async def check_state(path: str | os.PathLike[str]) -> list[str]:
    """What SQLite's full ``integrity_check`` finds wrong with the state file at
    ``path`` (empty: nothing), read-only and without the job's lock, so it runs
    beside a worker (``pipeline status --check``). It reads the whole file: about
    1 to 5 s per million requests held, more on larger files."""
    from pathlib import Path

    return await anyio.to_thread.run_sync(_check_state_sync, Path(path))


#: SQLite's primary result codes -> what they mean for a job's state file
_ADVICE = {
    "SQLITE_READONLY": (
        "is read-only ({}): a job writes its state as it goes; make the file and its "
        "directory writable (SQLite writes FILE-wal and FILE-shm next to it), or copy it "
        "to a writable place and pass that path as --state"
    ),
    "SQLITE_PERM": (
        "cannot be written ({}): make the file and its directory writable, or copy it "
        "to a writable place and pass that path as --state"
    ),
    "SQLITE_CANTOPEN": (
        "cannot be opened ({}): check that the file and its directory exist and are "
        "writable (SQLite writes FILE-wal and FILE-shm next to it)"
    ),
    "SQLITE_FULL": "cannot grow: the disk is full ({}); free some space, then run the "
    "same command again to resume",
    "SQLITE_IOERR": "cannot be read or written ({}); check the disk (full? mounted "
    "read-only? a file size limit?), then run the same command again to resume",
    "SQLITE_CORRUPT": (
        "is damaged ({}); restore it from a backup, or remove it (and its -wal file) to "
        "start the job over (`pipeline status --check` lists what is wrong)"
    ),
    "SQLITE_NOTADB": "is not a usable pipeline state file ({}): it is not an SQLite "
    "database; give --state a pipeline state file, or remove it to start the job over",
    "SQLITE_BUSY": "is locked by another program ({}); close it (a database browser?) and "
    "run the same command again",
    "SQLITE_LOCKED": "is locked by another program ({}); close it (a database browser?) "
    "and run the same command again",
}


def ledger_error(path: Path | str, exc: sqlite3.Error, *, opening: bool = False) -> LedgerError:
    """``exc`` as a one-line ``LedgerError`` naming the file and what to do;
    ``opening``: it happened while the file was opened and checked."""
    name = getattr(exc, "sqlite_errorname", None) or ""
    primary = next((k for k in _ADVICE if name == k or name.startswith(k + "_")), name)
    advice = _ADVICE.get(primary)
    if advice is not None:
        return LedgerError(str(path), advice.format(exc))
    if opening:  # the ledger's own checks (a meta entry missing, say), or SQLite's
        return LedgerError(str(path), f"is not a usable pipeline state file ({exc})")
    label = f"{name}: " if name else ""
    return LedgerError(
        str(path),
        f"unexpected SQLite error ({label}{exc}); run the same command again to resume, "
        f"and if it happens again run `pipeline status --check --state {path}`",
    )
