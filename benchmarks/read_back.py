"""What reading a round of spooled requests back from the input costs, per line:
``pipeline.stages.retry.read_back`` on rounds of 10,000 lines picked at random from
the generated file of ``--requests`` lines, ``--density`` of its lines in all (a
round of retries, or of ids the ledger deferred, is scattered through the input).

    python benchmarks/read_back.py --requests 1000000 --density 0.003 0.047 0.5

Prints the process's CPU (user + system: the event loop's and the worker threads')
and wall time per line read back, as the submitter's low-memory path asks
(``drop_file_bytes``: CRC-32s kept, not bytes). The file is read once before (from
the page cache, as a running job finds it). Run it with ``PYTHONPATH`` set to the
tree to measure.
"""

from __future__ import annotations

import argparse
import random
import resource
import sys
import time
from pathlib import Path

import anyio
import msgspec

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generate import ensure  # noqa: E402

from pipeline.ledger import SpoolItem  # noqa: E402
from pipeline.stages.retry import read_back  # noqa: E402

ROUND = 10_000


class _Id(msgspec.Struct):
    custom_id: str


def spooled(path: Path, density: float, seed: int = 1) -> list[SpoolItem]:
    """``density`` of the file's valid lines, at random, as the spool holds them."""
    rng = random.Random(seed)
    decode = msgspec.json.Decoder(_Id).decode
    items: list[SpoolItem] = []
    offset = 0
    with path.open("rb") as f:
        for number, line in enumerate(f, 1):
            if rng.random() < density:
                try:
                    cid = decode(line).custom_id
                except msgspec.DecodeError:
                    cid = None  # a bad line of the file: never spooled
                if cid is not None:
                    items.append(SpoolItem(cid, number, 1, offset, len(line), None))
            offset += len(line)
    return items


async def read_all(path: Path, items: list[SpoolItem]) -> tuple[float, float]:
    """CPU and wall seconds to read ``items`` back, a round of ``ROUND`` at a time."""
    from pipeline.stages._files import opened

    async with opened(path) as handle:
        before, start = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
        for k in range(0, len(items), ROUND):
            await read_back(items[k : k + ROUND], handle, path, drop_file_bytes=True)
        after, stop = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return cpu, stop - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--density", type=float, nargs="+", default=[0.003, 0.047, 0.5])
    parser.add_argument("--ids", choices=("ordered", "random"), default="random")
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    if args.data_dir is None:
        path = ensure(args.requests, ids=args.ids)
    else:
        path = ensure(args.requests, data_dir=args.data_dir, ids=args.ids)
    with path.open("rb") as f:  # into the page cache
        while f.read(1 << 24):
            pass
    print(f"{'density':>8} {'lines':>9} {'CPU µs/line':>12} {'wall µs/line':>13}")
    for density in args.density:
        items = spooled(path, density)
        cpu, wall = anyio.run(read_all, path, items)
        per_cpu, per_wall = cpu / len(items) * 1e6, wall / len(items) * 1e6
        print(f"{density:>8} {len(items):>9,} {per_cpu:>12.1f} {per_wall:>13.1f}")


if __name__ == "__main__":
    main()
