"""Bulk generation: product rows from a CSV into descriptions (CSV -> requests ->
results -> CSV).

Run (no API key needed: the embedded emulator answers):

    python examples/product_descriptions.py --workdir /tmp/products --rows 500

Writes ``products.csv`` (sample rows, unless one is there already), streams its
rows into requests (the CSV is never loaded whole), runs the job with the JSONL
results file as the durable output (re-running the command resumes an
interrupted job), then joins ``results.jsonl`` back to the rows by custom_id
(``sku-<SKU>``) into ``descriptions.csv``.
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pipeline import Pipeline, PipelineConfig
from pipeline.api._types import ResultLine, SucceededResult

if TYPE_CHECKING:
    from collections.abc import Iterator

MODEL = "claude-3-5-sonnet-20241022"
_decoder = msgspec.json.Decoder(ResultLine)
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


def requests(path: Path) -> Iterator[dict[str, Any]]:
    """One request per CSV row, read lazily."""
    with path.open(newline="") as handle:
        for row in csv.DictReader(handle):
            prompt = (
                f"Write a two-sentence product description for {row['name']} "
                f"({row['category']}). Features: {row['features']}."
            )
            yield {
                "custom_id": f"sku-{row['sku']}",
                "params": {
                    "model": MODEL,
                    "max_tokens": 300,
                    "messages": [{"role": "user", "content": prompt}],
                },
            }


def descriptions(results: Path) -> dict[str, str]:
    """sku -> description from the results file (errored requests are left out)."""
    out = {}
    with results.open("rb") as handle:
        for raw in handle:
            line = _decoder.decode(raw)
            if isinstance(line.result, SucceededResult):
                text = "".join(b.get("text", "") for b in line.result.message.content)
                out[line.custom_id.removeprefix("sku-")] = text
    return out


async def generate(workdir: Path, n: int, *, api_key: str | None = None) -> Path:
    """Describe every product; the path of ``descriptions.csv``."""
    workdir.mkdir(parents=True, exist_ok=True)
    products = workdir / "products.csv"
    if not products.exists():
        write_sample_csv(products, n)
    results = workdir / "results.jsonl"
    pipeline = Pipeline(
        requests(products), results, config=PipelineConfig(linger_seconds=0.2), api_key=api_key
    )
    await pipeline.run()
    texts = descriptions(results)
    out = workdir / "descriptions.csv"
    with products.open(newline="") as src, out.open("w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["sku", "name", "description"])
        for row in csv.DictReader(src):
            writer.writerow([row["sku"], row["name"], texts.get(row["sku"], "")])
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("examples-out/products"))
    parser.add_argument("--rows", type=int, default=500)
    args = parser.parse_args()
    out = anyio.run(
        lambda: generate(args.workdir, args.rows, api_key=os.environ.get("ANTHROPIC_API_KEY"))
    )
    print(f"descriptions: {out}")


if __name__ == "__main__":
    main()
