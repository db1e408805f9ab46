"""Content moderation: user-generated texts classified through a tool-use schema,
results joined back to the source rows by custom_id.

Run (no API key needed: the embedded emulator answers):

    python examples/moderation.py --workdir /tmp/moderation --rows 200

Each comment becomes a request whose ``tool_choice`` forces the ``classify``
tool, so every answer is structured: ``{"category": ..., "flagged": ...,
"reason": ...}``. Results come back in any order; the custom_id (``comment-<row
id>``) joins each to its row, and ``moderated.csv`` gets one line per comment
with its verdict. (The emulator's fake model fills the schema with its first
allowed values; a real model classifies.)
"""

from __future__ import annotations

import argparse
import csv
import os
from pathlib import Path
from typing import Any

import anyio

from pipeline import Pipeline, PipelineConfig
from pipeline.api._types import ResultLine, SucceededResult

MODEL = "claude-3-5-haiku-20241022"
CATEGORIES = ["ok", "spam", "harassment", "hate", "self_harm", "other"]
CLASSIFY_TOOL = {
    "name": "classify",
    "description": "Record the moderation verdict for one user comment.",
    "input_schema": {
        "type": "object",
        "properties": {
            "category": {"type": "string", "enum": CATEGORIES},
            "flagged": {"type": "boolean", "description": "true if it must be hidden"},
            "reason": {"type": "string", "description": "one short sentence"},
        },
        "required": ["category", "flagged", "reason"],
    },
}
SAMPLES = [
    "Great article, thanks for writing it!",
    "BUY CHEAP WATCHES at my site!!!",
    "I disagree with the author, the data from 2019 says otherwise.",
    "You are an idiot and everyone hates you.",
    "Does anyone know if this works on Windows?",
]


def comments(n: int) -> list[dict[str, str]]:
    """The source rows: id, user, text."""
    return [
        {"id": str(1000 + i), "user": f"user{i % 37}", "text": SAMPLES[i % len(SAMPLES)]}
        for i in range(n)
    ]


def request(row: dict[str, str]) -> dict[str, Any]:
    return {
        "custom_id": f"comment-{row['id']}",
        "params": {
            "model": MODEL,
            "max_tokens": 200,
            "system": "You moderate comments on a news site. Classify each comment.",
            "tools": [CLASSIFY_TOOL],
            "tool_choice": {"type": "tool", "name": "classify"},
            "messages": [{"role": "user", "content": row["text"]}],
        },
    }


def verdict(line: ResultLine) -> dict[str, Any]:
    """The tool input of a succeeded result, else an ``error`` verdict."""
    if isinstance(line.result, SucceededResult):
        for block in line.result.message.content:
            if block.get("type") == "tool_use" and block.get("name") == "classify":
                return dict(block["input"])
    return {"category": "error", "flagged": None, "reason": line.result.__class__.__name__}


async def moderate(workdir: Path, n: int, *, api_key: str | None = None) -> Path:
    """Classify ``n`` comments; the path of the joined CSV."""
    workdir.mkdir(parents=True, exist_ok=True)
    rows = comments(n)
    verdicts: dict[str, dict[str, Any]] = {}

    async def collect(line: ResultLine) -> None:
        verdicts[line.custom_id.removeprefix("comment-")] = verdict(line)

    pipeline = Pipeline(
        (request(r) for r in rows),
        collect,
        state=workdir / "moderation.state",
        config=PipelineConfig(linger_seconds=0.2),
        api_key=api_key,
    )
    await pipeline.run()
    out = workdir / "moderated.csv"
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "user", "text", "category", "flagged", "reason"])
        for row in rows:  # the join: source row + its verdict, by custom_id
            v = verdicts.get(row["id"], {"category": "missing", "flagged": None, "reason": ""})
            writer.writerow(
                [row["id"], row["user"], row["text"], v["category"], v["flagged"], v["reason"]]
            )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("examples-out/moderation"))
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    out = anyio.run(
        lambda: moderate(args.workdir, args.rows, api_key=os.environ.get("ANTHROPIC_API_KEY"))
    )
    print(f"verdicts joined to their rows: {out}")


if __name__ == "__main__":
    main()
