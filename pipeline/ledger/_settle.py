"""Settling by hand what the job cannot decide alone: a batch create whose outcome
reconciliation could not tell (adopt the batch it made, or release its requests),
or a created batch that is gone at the service for good (abandon it). The
``status`` command's ``--adopt``, ``--release`` and ``--abandon`` call this; it
takes the job's lock, so the worker must be stopped first.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ._sqlite import SQLiteLedger

if TYPE_CHECKING:
    import os

__all__ = ("settle_batches",)


async def settle_batches(
    path: str | os.PathLike[str],
    *,
    adopt: tuple[int, str] | None = None,
    release: int | None = None,
    abandon: int | None = None,
) -> int | None:
    """Record in the state file at ``path``: that the unknown-outcome create
    ``adopt[0]`` made batch ``adopt[1]``; that the create ``release`` made no batch
    (its requests are sent again on the next start); that the created batch
    ``abandon`` is gone for good. Returns how many requests ``abandon`` spooled to
    send again (None without it). ``LedgerError`` / ``UsageError`` when refused."""
    ledger = SQLiteLedger(path)
    await ledger.open_existing()
    try:
        if adopt is not None:
            await ledger.record_created(*adopt)
        if release is not None:
            await ledger.release(release)
        return None if abandon is None else await ledger.abandon(abandon)
    finally:
        await ledger.aclose()
