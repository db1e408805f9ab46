"""What composing costs: the same requests sent from a JSONL file (the standard
chain), from records through a request builder, and through a builder and a
result processor, against one emulator in its own process.

    python benchmarks/stages.py --requests 100000 --rounds 3

Each round runs the three pipelines one after the other in this process (fresh
state and output each time) and prints the client CPU (user + system of this
process, the emulator excluded) per request. A builder's requests are stored in
the ledger with their bytes (a JSONL input's are stored as offsets into the
file), so this also measures what keeping the builder's work for retries costs.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import msgspec

from pipeline import Pipeline, PipelineConfig
from pipeline.stages import JoinedResult, build_requests, process_results
from pipeline.testing import start_emulator_process

MODEL = "claude-3-haiku-20240307"
CONFIG = PipelineConfig(dry_run="off", poll_interval=0.2, linger_seconds=0.2)


def record(i: int) -> dict[str, Any]:
    return {"id": f"r-{i:09d}", "topic": f"topic number {i}", "words": 40 + i % 50}


def build(rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "custom_id": rec["id"],
        "params": {
            "model": MODEL,
            "max_tokens": 64,
            "messages": [
                {"role": "user", "content": f"Write {rec['words']} words on {rec['topic']}."}
            ],
        },
    }


def process(joined: JoinedResult) -> dict[str, Any]:
    return {"id": joined.custom_id, "text": joined.text}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def one(kind: str, url: str, n: int, work: Path, data: Path) -> tuple[float, float]:
    """(client CPU s, wall s) of one job of ``kind``."""
    out = work / f"{kind}.jsonl"
    stages: list[Any] = []
    source: Any = data
    if kind != "jsonl":
        source = [record(i) for i in range(n)]
        stages = [build_requests(build)]
        if kind == "builder+processor":
            stages.append(process_results(process))
    pipeline = Pipeline(
        source,
        out,
        config=CONFIG,
        base_url=url,
        api_key="bench",
        stages=stages,
        state=work / f"{kind}.state",
    )
    started, wall = cpu(), time.monotonic()
    stats = await pipeline.run()
    spent, wall = cpu() - started, time.monotonic() - wall
    assert stats.written == n, stats
    return spent, wall


async def main(n: int, rounds: int) -> None:
    kinds = ["jsonl", "builder", "builder+processor"]
    results: dict[str, list[float]] = {k: [] for k in kinds}
    with (
        tempfile.TemporaryDirectory() as tmp,
        start_emulator_process("--batch-seconds", "0") as url,
    ):
        data = Path(tmp) / "in.jsonl"
        data.write_bytes(b"".join(msgspec.json.encode(build(record(i))) + b"\n" for i in range(n)))
        for r in range(rounds):
            for kind in kinds if r % 2 == 0 else kinds[::-1]:
                work = Path(tmp) / f"{kind}-{r}"
                work.mkdir()
                spent, wall = await one(kind, url, n, work, data)
                results[kind].append(spent)
                print(f"round {r + 1} {kind}: {spent / n * 1e6:.1f} µs/request, wall {wall:.1f} s")
                shutil.rmtree(work)
    base = statistics.median(results["jsonl"])
    print("| pipeline | CPU µs/request (median) | vs JSONL input |")
    print("|---|--:|--:|")
    for kind in kinds:
        median = statistics.median(results[kind])
        print(f"| {kind} | {median / n * 1e6:.1f} | {median / base:.2f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    anyio.run(main, args.requests, args.rounds)
