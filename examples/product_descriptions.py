"""Bulk generation: product rows from a CSV into descriptions (CSV -> requests ->
results -> CSV).

Run (no API key needed: the embedded emulator answers):

    python examples/product_descriptions.py --workdir /tmp/products --rows 500

Writes ``products.csv`` (``--rows`` sample rows, unless one is there already:
bring your own) and runs one composed pipeline on its rows: a request builder
(``build_requests``) makes each row's request, and a result processor
(``process_results``) turns each result, joined with its row, into the output
record ``{"sku", "name", "description"}``: ``results.jsonl`` holds those, exactly
once each even across crashes. ``descriptions.csv`` is that file as a CSV, by sku.
No script builds a request file before the job or joins the results after it.

Re-running the same command is safe: an interrupted job (Ctrl-C, a crash) is
resumed, a finished one sends nothing, and ``descriptions.csv`` is rebuilt from
``results.jsonl`` either way. Rows added to ``products.csv`` after the job
finished get no description (the command says how many): ``--fresh`` discards
the job (not ``products.csv``) and starts a new one.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pipeline import Pipeline, PipelineConfig, read_status
from pipeline.stages import build_requests, process_results

if TYPE_CHECKING:
    from pipeline.stages import JoinedResult

MODEL = "claude-sonnet-5-5"
_decoder = msgspec.json.Decoder(dict[str, str])
KINDS = ["kettle", "backpack", "desk lamp", "running shoe", "chef knife", "water bottle"]


def write_sample_csv(path: Path, n: int) -> None:
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "name", "category", "features"])
        for i in range(n):
            kind = KINDS[i % len(KINDS)]
            writer.writerow(
                [f"P{i:05d}", f"Acme {kind} {i}", kind, f"feature {i % 7}; colour {i % 5}"]
            )


def rows(path: Path) -> list[dict[str, str]]:
    """The rows of the CSV, as a list: a list (any sequence) gives each row back to
    the result processor with its result. (A source too large to hold can be any
    iterable; the processor then gets ``record=None`` and uses its request.)"""
    with path.open(newline="") as handle:
        return list(csv.DictReader(handle))


def build(row: dict[str, str]) -> dict[str, Any]:
    """The request builder: one request per row."""
    prompt = (
        f"Write a two-sentence product description for {row['name']} "
        f"({row['category']}). Features: {row['features']}."
    )
    return {
        "custom_id": f"sku-{row['sku']}",
        "params": {
            "model": MODEL,
            "max_tokens": 300,
            "messages": [{"role": "user", "content": prompt}],
        },
    }


def describe(joined: JoinedResult) -> dict[str, str]:
    """The result processor: the row's description ("" for a request that did not
    succeed: only a succeeded result carries a message)."""
    row = joined.record
    return {"sku": row["sku"], "name": row["name"], "description": joined.text or ""}


def discard_job(workdir: Path) -> None:
    """``--fresh``: delete the job's state, results and ``descriptions.csv`` (the
    input ``products.csv`` stays)."""
    for path in [*workdir.glob("results.*"), workdir / "descriptions.csv"]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


async def generate(
    workdir: Path, n: int, *, api_key: str | None = None, fresh: bool = False
) -> Path:
    """Describe every product (or resume doing so); the path of ``descriptions.csv``,
    also for a job that had already finished."""
    workdir.mkdir(parents=True, exist_ok=True)
    if fresh:
        discard_job(workdir)
    products = workdir / "products.csv"
    if not products.exists():
        write_sample_csv(products, n)
    results, state = workdir / "results.jsonl", workdir / "results.jsonl.state"
    table = rows(products)
    # a finished job has all its results in results.jsonl already: nothing to run
    if not (state.exists() and (await read_status(state)).finished):
        pipeline = Pipeline(
            table,
            results,
            state=state,
            stages=[build_requests(build), process_results(describe)],
            config=PipelineConfig(linger_seconds=0.2),
            api_key=api_key,
        )
        await pipeline.run()  # a new job, or the interrupted one resumed
    described = sorted(
        (_decoder.decode(line) for line in results.read_bytes().splitlines()),
        key=lambda d: d["sku"],
    )
    out = workdir / "descriptions.csv"
    with out.open("w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["sku", "name", "description"])
        writer.writerows([d["sku"], d["name"], d["description"]] for d in described)
    missing = len(table) - len(described)
    if missing:
        print(
            f"{missing} rows of {products} have no result: were they added after the job "
            "finished? --fresh starts a new job",
            file=sys.stderr,
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("examples-out/products"))
    parser.add_argument(
        "--rows", type=int, default=500, help="rows of the sample products.csv (if none is there)"
    )
    parser.add_argument(
        "--fresh", action="store_true", help="discard the workdir's job and start a new one"
    )
    args = parser.parse_args()
    api_key = os.environ.get("ANTHROPIC_API_KEY")
    out = anyio.run(lambda: generate(args.workdir, args.rows, api_key=api_key, fresh=args.fresh))
    print(f"descriptions: {out}")


if __name__ == "__main__":
    main()
