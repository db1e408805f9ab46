"""Loaded by the workers of ``tests/ledger/test_deferred_crash.py`` (this folder is
first on their ``PYTHONPATH``): the ledger's filter made coarse, as the in-process
tests of ``test_deferred.py`` make it, so that a subprocess defers many new ids too.

Each key sets one of 8 bits of one of 1,024 words (8,192 places: a few thousand ids
fill a good share of them), and the ledger hashes the ids once 100 came late."""

from array import array

from pipeline.ledger import _sqlite_ids as ids

ids._masks = lambda: array("Q", [1 << (m & 7) for m in range(1 << 16)])
ids._MIN_KEYS = 1
ids._LATE_FLOOR = 100
