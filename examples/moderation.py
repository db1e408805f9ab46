"""Content moderation: user-generated texts classified through a tool-use schema,
each verdict joined with its row by a result processor.

Run (no API key needed: the embedded emulator answers):

    python examples/moderation.py --workdir /tmp/moderation --rows 200

A request builder (``build_requests``) makes each comment's request, whose
``tool_choice`` forces the ``classify`` tool, so every answer is structured:
``{"category": ..., "flagged": ..., "reason": ...}``. Results come back in any
order; a result processor (``process_results``) gets each one joined with its
request and its row, and writes the row with its verdict to ``results.jsonl``
(exactly once, even across crashes); ``moderated.csv`` is that file in row order.
(The emulator's fake model fills the schema with its first allowed values; a
real model classifies.)

Re-running the same command is safe: ``moderated.csv`` is rebuilt from
``results.jsonl``, the job's durable output, so a finished job gives the same CSV
again without sending anything, and an interrupted one (Ctrl-C, a crash) is
resumed first. A workdir holds one job (``job.json`` says how many rows): asking
it for other rows is an error; ``--fresh`` discards the job and starts a new one.
"""

from __future__ import annotations

import argparse
import csv
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pipeline import Pipeline, PipelineConfig, read_status
from pipeline.stages import build_requests, process_results

if TYPE_CHECKING:
    from pipeline.api import ResultLine
    from pipeline.stages import JoinedResult

MODEL = "claude-haiku-4-5"
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
_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(dict[str, Any])
FIELDS = ["id", "user", "text", "category", "flagged", "reason"]


class WorkdirInUseError(Exception):
    """The workdir holds a job with other requests than the ones asked for."""


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


def claim_workdir(path: Path, n: int) -> None:
    """A workdir holds one job: ``job.json`` names its rows; another count is an error."""
    data = _encoder.encode({"rows": n})
    if path.exists():
        if path.read_bytes() != data:
            raise WorkdirInUseError(
                f"{path.parent} holds a job with other rows: run with --fresh to discard "
                "it, or use another --workdir"
            )
        return
    path.write_bytes(data)


def discard_job(workdir: Path) -> None:
    """``--fresh``: delete this example's files in ``workdir`` (nothing else)."""
    for path in [*workdir.glob("results.*"), workdir / "job.json", workdir / "moderated.csv"]:
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


def verdict(line: ResultLine) -> dict[str, Any]:
    """The tool input of a succeeded result (the only kind that carries a message),
    else an ``error`` verdict."""
    message = getattr(line.result, "message", None)
    if message is not None:
        for block in message.content:
            if block.get("type") == "tool_use" and block.get("name") == "classify":
                return dict(block["input"])
    kind = type(line.result).__struct_config__.tag  # errored, canceled or expired
    error = getattr(line.result, "error", None)
    reason = f"{kind}: {error.error.message}" if error is not None else kind
    return {"category": "error", "flagged": None, "reason": reason}


def moderated(joined: JoinedResult) -> dict[str, Any]:
    """The result processor: the comment's row with its verdict."""
    row, v = joined.record, verdict(joined.result)
    return {**row, "category": v["category"], "flagged": v["flagged"], "reason": v["reason"]}


def write_csv(out: Path, results: Path) -> None:
    """The processed rows as a CSV, in row order."""
    rows = [_decoder.decode(line) for line in results.read_bytes().splitlines()]
    rows.sort(key=lambda r: int(r["id"]))
    with out.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(FIELDS)
        writer.writerows([r[f] for f in FIELDS] for r in rows)


async def moderate(
    workdir: Path, n: int, *, api_key: str | None = None, fresh: bool = False
) -> Path:
    """Classify ``n`` comments (or resume doing so); the path of the joined CSV, also
    for a job that had already finished."""
    workdir.mkdir(parents=True, exist_ok=True)
    if fresh:
        discard_job(workdir)
    claim_workdir(workdir / "job.json", n)
    results, state = workdir / "results.jsonl", workdir / "results.jsonl.state"
    # a finished job has all its results in results.jsonl already: nothing to run
    if not (state.exists() and (await read_status(state)).finished):
        pipeline = Pipeline(
            comments(n),
            results,
            state=state,
            stages=[build_requests(request), process_results(moderated)],
            config=PipelineConfig(linger_seconds=0.2),
            api_key=api_key,
        )
        await pipeline.run()  # a new job, or the interrupted one resumed
    out = workdir / "moderated.csv"
    write_csv(out, results)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("examples-out/moderation"))
    parser.add_argument("--rows", type=int, default=200)
    parser.add_argument(
        "--fresh", action="store_true", help="discard the workdir's job and start a new one"
    )
    args = parser.parse_args()
    api_key = os.environ.get("ANTHROPIC_API_KEY")
    try:
        out = anyio.run(
            lambda: moderate(args.workdir, args.rows, api_key=api_key, fresh=args.fresh)
        )
    except WorkdirInUseError as exc:
        parser.error(str(exc))
    print(f"verdicts joined to their rows: {out}")


if __name__ == "__main__":
    main()
