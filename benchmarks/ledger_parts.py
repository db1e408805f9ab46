"""Where the ledger's time goes inside a real run: ``benchmarks/run.py`` of the
pipeline alone, its client with the SQLite ledger's parts timed.

    python benchmarks/ledger_parts.py --requests 1000000 --ids random [run.py options]

The client runs with ``benchmarks/ledger_parts`` first on ``PYTHONPATH``: its
``sitecustomize`` wraps the ledger's transactions and the parts of a claim (hashing,
the filter, storing the keys, resolving deferred ids, commits) with ``time.thread_time``, the
CPU of the ledger's own thread, so the parts add up to what the ledger's thread costs,
measured where it competes with the stages for the caches and the GIL (the ledger
alone, ``benchmarks/ledger_bench.py``, runs each part faster). Prints µs per request
of each part, and the bytes each kind of transaction wrote to the WAL per request (its
frames, read from the WAL index in the ``-shm`` file); ``run.py``'s own figures first.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import run  # noqa: E402

#: a claim's parts, shown under its transaction
_CLAIM_PARTS = (
    "hash the ids (BLAKE2b)",
    "the filter",
    "store the claim's keys (a row of idclaims)",
    "resolve deferred ids: read every key held",
    "look ids below the top up (ids in order)",
    "store ids in order",
)


def parts_table(
    seconds: dict[str, float],
    calls: dict[str, int],
    requests: int,
    pages: dict[str, int] | None = None,
) -> str:
    """µs per request of each part, a claim's parts under its transaction; for each
    transaction, the bytes it wrote to the WAL per request (pages of 4 KiB)."""
    pages = pages or {}
    rows = [
        f"{'ledger thread, µs per request':52s} {'µs/req':>8s} {'calls':>8s} {'WAL B/req':>10s}"
    ]

    def row(label: str, indent: str = "") -> None:
        if label in seconds:
            wal = f"{pages[label] * 4096 / requests:10.1f}" if label in pages else ""
            rows.append(
                f"{indent + label:52s} {seconds[label] / requests * 1e6:8.2f} "
                f"{calls.get(label, 0):8d} {wal}".rstrip()
            )

    transactions = sorted(
        (k for k in seconds if k.startswith("transaction: ")), key=lambda k: -seconds[k]
    )
    for label in transactions:
        row(label)
        if label == "transaction: claim":
            for part in _CLAIM_PARTS:
                row(part, "  ")
    row("commits (the WAL)")
    if pages:
        total = sum(pages.values()) * 4096 / requests
        rows.append(f"{'WAL, all transactions':52s} {'':8s} {'':8s} {total:10.1f}")
    return "\n".join(rows)


def main(argv: list[str]) -> int:
    args = run._parse(argv)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = os.path.join(tmp, "parts")
        os.environ["LEDGER_PARTS"] = prefix
        os.environ["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(HERE / "ledger_parts"), os.environ.get("PYTHONPATH")) if p
        )
        code = run.main([*argv, "--contenders", "pipeline"])
        dumps = sorted(Path(tmp).glob("parts.*"))
        if len(dumps) != 1:
            raise SystemExit(f"expected the client's timings in one file, found {len(dumps)}")
        timings = json.loads(dumps[0].read_bytes())
    print(parts_table(timings["seconds"], timings["calls"], args.requests, timings.get("pages")))
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
