"""Micro-benchmark of the SQLite ledger: claim and commit cost per request as the
job grows, for sequential and random (UUID-like, 32 hex) custom_ids, and the peak
RSS of a process that only drives the ledger.

Each configuration runs in a fresh subprocess (so ``ru_maxrss`` is its own) and
drives the ledger the way the pipeline does per batch: ``claim`` of 10,000
file-backed entries, ``record_sending`` / ``record_created`` / ``record_ended``,
then ``commit_results`` per 4,096 written lines (the results stage's
``COMMIT_LINES``) with their ``written_ids``.

    python benchmarks/ledger_bench.py                    # 100k and 1M, seq and random
    python benchmarks/ledger_bench.py --sizes 100000 --json out.json
    python benchmarks/ledger_bench.py --sizes 10000000 --kinds random   # first/last 100k

Besides the mean claim cost it gives that of the first and the last 100,000
requests claimed (the growth with the job in one run), the process's user and
system CPU over the whole run, and the bytes written to disk (``/proc/self/io``
``write_bytes``: the WAL, its checkpoints, the database). ``--pragma NAME=VALUE``
(repeatable) sets a pragma on the ledger's connection after it opened, to measure
what durability costs (``synchronous=OFF``, ``journal_mode=MEMORY``...).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BATCH = 10_000
COMMIT_LINES = 4096


def _ids(kind: str, start: int, n: int, rng: random.Random) -> list[str]:
    if kind == "seq":
        return [f"req-{i:09d}" for i in range(start, start + n)]
    return [f"{rng.getrandbits(128):032x}" for _ in range(n)]


def _written_bytes() -> int:
    for line in Path("/proc/self/io").read_text().splitlines():
        if line.startswith("write_bytes:"):
            return int(line.split()[1])
    return 0


async def _drive(path: Path, kind: str, total: int, pragmas: list[str]) -> dict[str, float]:
    from pipeline.ledger._base import JobSpec, SinkPosition
    from pipeline.ledger._sqlite import SQLiteLedger
    from pipeline.stages._items import Entry

    rng = random.Random(7)
    ledger = SQLiteLedger(path)
    await ledger.open(
        JobSpec(input_path="in", input_fingerprint="x", output_path="out", rejects_path=None)
    )
    for pragma in pragmas:
        conn = ledger._conn  # noqa: SLF001 (a measurement, not a use of the ledger)
        assert conn is not None
        conn.execute(f"PRAGMA {pragma}")
    usage0 = resource.getrusage(resource.RUSAGE_SELF)
    written0 = _written_bytes()
    claim_s: list[float] = []
    commit_s = 0.0
    written = 0
    offset = 0
    for b in range(total // BATCH):
        ids = _ids(kind, b * BATCH, BATCH, rng)
        base = b * BATCH
        entries = [
            Entry(base + i + 1, cid, b"", offset=(base + i) * 600, end=(base + i + 1) * 600)
            for i, cid in enumerate(ids)
        ]
        t = time.perf_counter()
        claim = await ledger.claim(entries, (), checkpoint=(base + BATCH) * 600, line=base + BATCH)
        claim_s.append(time.perf_counter() - t)
        assert not claim.duplicates
        lid = claim.local_id
        await ledger.record_sending(lid, body_bytes=BATCH * 600, sent_at=time.time())
        await ledger.record_created(lid, f"msgbatch_{b}")
        await ledger.record_ended(lid)
        await ledger.record_output_start(lid, offset)
        order = ids[:]
        rng.shuffle(order)  # results come in any order
        for i in range(0, BATCH, COMMIT_LINES):
            part = order[i : i + COMMIT_LINES]
            written += len(part)
            offset += 600 * len(part)
            t = time.perf_counter()
            await ledger.commit_results(
                lid,
                output=SinkPosition(offset, written),
                written=len(part),
                done=i + COMMIT_LINES >= BATCH,
                written_ids=part,
            )
            commit_s += time.perf_counter() - t
    await ledger.aclose()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    tail = claim_s[-max(1, len(claim_s) // 10) :]
    edge = max(1, min(len(claim_s), 100_000 // BATCH))
    return {
        "claim_us_per_request": sum(claim_s) / total * 1e6,
        "claim_us_first_100k": sum(claim_s[:edge]) / (edge * BATCH) * 1e6,
        "claim_us_last_100k": sum(claim_s[-edge:]) / (edge * BATCH) * 1e6,
        "claim_us_last_10pct": sum(tail) / (len(tail) * BATCH) * 1e6,
        "user_s": usage.ru_utime - usage0.ru_utime,
        "sys_s": usage.ru_stime - usage0.ru_stime,
        "disk_write_mb": (_written_bytes() - written0) / 1e6,
        "commit_us_per_result": commit_s / total * 1e6,
        "db_mb": path.stat().st_size / 1e6,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    }


def _child(kind: str, total: int, pragmas: list[str]) -> None:
    import anyio

    with tempfile.TemporaryDirectory(dir=os.environ.get("LEDGER_BENCH_DIR")) as tmp:
        result = anyio.run(_drive, Path(tmp) / "state.db", kind, total, pragmas)
    print(json.dumps(result))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="100000,1000000")
    parser.add_argument("--kinds", default="seq,random")
    parser.add_argument("--json", dest="json_path")
    parser.add_argument("--pragma", action="append", default=[], help="NAME=VALUE, after open")
    parser.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        _child(args.child[0], int(args.child[1]), args.pragma)
        return 0
    rows = []
    print(
        f"{'ids':>7} {'requests':>10} {'claim µs/req':>13} {'first 100k':>11} {'last 100k':>10} "
        f"{'commit µs/res':>14} {'user s':>7} {'sys s':>6} {'disk MB':>8} {'db MB':>7} "
        f"{'peak RSS MB':>12}"
    )
    for total in (int(s) for s in args.sizes.split(",")):
        for kind in args.kinds.split(","):
            out = subprocess.run(
                [
                    sys.executable,
                    __file__,
                    "--child",
                    kind,
                    str(total),
                    *(f"--pragma={p}" for p in args.pragma),
                ],
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            r = {"ids": kind, "requests": total, **json.loads(out.strip().splitlines()[-1])}
            r["pragmas"] = args.pragma
            rows.append(r)
            print(
                f"{kind:>7} {total:>10,} {r['claim_us_per_request']:>13.2f} "
                f"{r['claim_us_first_100k']:>11.2f} {r['claim_us_last_100k']:>10.2f} "
                f"{r['commit_us_per_result']:>14.2f} {r['user_s']:>7.1f} {r['sys_s']:>6.1f} "
                f"{r['disk_write_mb']:>8.0f} {r['db_mb']:>7.1f} {r['peak_rss_mb']:>12.1f}",
                flush=True,
            )
    if args.json_path:
        Path(args.json_path).write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
