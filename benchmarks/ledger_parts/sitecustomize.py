"""Loaded by every Python process started with this folder first on ``PYTHONPATH``
(``benchmarks/ledger_parts.py`` does that for the pipeline it runs): when
``LEDGER_PARTS`` names a file prefix, the SQLite ledger's parts are timed with
``time.thread_time`` (the CPU of the thread that runs them: the ledger's) and the sums
are written at exit to ``<prefix>.<pid>``, by a process that ran a ledger only.

Nothing is imported here before the pipeline imports its ledger (an import hook waits
for ``pipeline.ledger._sqlite``): the pipeline measured is the one the process finds,
as it would without this folder."""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from importlib.machinery import ModuleSpec
    from types import ModuleType

_LEDGER = "pipeline.ledger._sqlite"


def _instrument(sqlite_ledger: ModuleType) -> None:
    import atexit
    import collections
    import contextlib
    import inspect
    import json
    import time

    from pipeline.ledger import _sqlite_ids as ids

    seconds: collections.Counter[str] = collections.Counter()
    calls: collections.Counter[str] = collections.Counter()
    #: pages each kind of transaction wrote to the WAL
    pages: collections.Counter[str] = collections.Counter()
    clock = time.thread_time
    #: the transaction running now (set by ``timed_run`` in the ledger's thread)
    running = ["?"]

    def timed(label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            start = clock()
            try:
                return fn(*args, **kwargs)
            finally:
                seconds[label] += clock() - start
                calls[label] += 1

        return call

    ids.keys_of = timed("hash the ids (BLAKE2b)", ids.keys_of)
    ids.KeyFilter.known = timed("the filter", ids.KeyFilter.known)  # type: ignore[method-assign]
    for name, label in (
        ("hold", "store the claim's keys (a row of idclaims)"),
        ("held_lines", "resolve deferred ids: read every key held"),
        ("_ordered_lookup", "look ids below the top up (ids in order)"),
        ("_insert_ordered", "store ids in order"),
    ):
        method = timed(label, getattr(ids.IdIndex, name))
        static = isinstance(inspect.getattr_static(ids.IdIndex, name), staticmethod)
        setattr(ids.IdIndex, name, staticmethod(method) if static else method)

    transaction = sqlite_ledger.transaction

    #: the ``-shm`` file of each connection (by ``id``), opened once: it lives as long
    #: as the ledger's connection does
    shm_fds: dict[int, int] = {}

    def wal_frames(conn: Any) -> int:
        """Frames in the WAL now: ``mxFrame`` of the WAL-index header (a native u32
        at byte 16 of the ``-shm`` file), which a checkpoint's restart sets back."""
        fd = shm_fds.get(id(conn))
        if fd is None:
            shm = conn.execute("PRAGMA database_list").fetchone()[2] + "-shm"
            fd = shm_fds[id(conn)] = os.open(shm, os.O_RDONLY)
        return int.from_bytes(os.pread(fd, 4, 16), sys.byteorder)

    @contextlib.contextmanager
    def timed_transaction(conn: Any) -> Iterator[None]:
        before = wal_frames(conn)
        with transaction(conn):
            yield
            start = clock()  # the commit: leaving the block
        seconds["commits (the WAL)"] += clock() - start
        calls["commits (the WAL)"] += 1
        after = wal_frames(conn)
        pages[running[0]] += after - before if after >= before else after

    sqlite_ledger.transaction = timed_transaction
    run = sqlite_ledger.SQLiteLedger._run

    async def timed_run(self: Any, fn: Callable[..., Any], **kwargs: Any) -> Any:
        label = "transaction: " + fn.__qualname__.split(".<locals>")[0].split(".")[-1]
        timed_fn = timed(label, fn)

        def labelled(conn: Any) -> Any:
            running[0] = label
            return timed_fn(conn)

        return await run(self, labelled, **kwargs)

    sqlite_ledger.SQLiteLedger._run = timed_run

    @atexit.register
    def _dump() -> None:
        if seconds:
            with open(f"{os.environ['LEDGER_PARTS']}.{os.getpid()}", "w") as out:
                json.dump(
                    {"seconds": dict(seconds), "calls": dict(calls), "pages": dict(pages)}, out
                )


class _WhenLedgerLoads:
    """A finder that answers for the ledger's module only, once: it finds it as the
    other finders would and instruments it once it has run."""

    def find_spec(
        self, name: str, path: Sequence[str] | None, target: ModuleType | None = None
    ) -> ModuleSpec | None:
        if name != _LEDGER:
            return None
        import importlib.util

        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        loader: Any = spec.loader
        exec_module = loader.exec_module

        def run_then_instrument(module: ModuleType) -> None:
            exec_module(module)
            _instrument(module)

        loader.exec_module = run_then_instrument
        return spec


if os.environ.get("LEDGER_PARTS"):
    sys.meta_path.insert(0, _WhenLedgerLoads())  # type: ignore[arg-type]
