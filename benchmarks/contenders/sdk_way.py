"""The job written the way a user of the official ``anthropic`` SDK would write it.

Read the JSONL file, ``json.loads`` each line (skipping lines that do not parse or lack
``custom_id``/``params``), ``messages.batches.create(requests=...)`` per 10,000,
poll ``retrieve`` until every batch has ended, then iterate
``messages.batches.results(id)`` and write each result as a JSONL line.

The file is streamed (one chunk of 10,000 parsed requests held at a time), which is
kinder to the SDK than the common "load the whole file first" script; ``--load-all``
does the latter.

``python benchmarks/contenders/sdk_way.py --input IN --output OUT --base-url URL``
prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

import anthropic

BATCH_SIZE = 10_000


def read_requests(path: str, load_all: bool) -> Any:
    """Yield lists of up to BATCH_SIZE request dicts; count skipped lines."""
    chunk: list[dict[str, Any]] = []
    skipped = 0
    with open(path, encoding="utf-8") as f:
        lines: Any = f.readlines() if load_all else f
        for line in lines:
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError:
                skipped += 1
                continue
            if not isinstance(obj, dict) or "custom_id" not in obj or "params" not in obj:
                skipped += 1
                continue
            chunk.append({"custom_id": obj["custom_id"], "params": obj["params"]})
            if len(chunk) == BATCH_SIZE:
                yield chunk, skipped
                chunk = []
    yield chunk, skipped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    parser.add_argument("--load-all", action="store_true")
    args = parser.parse_args(argv)

    client = anthropic.Anthropic(api_key="bench-key", base_url=args.base_url)
    batch_ids: list[str] = []
    skipped = 0
    for requests, skipped_so_far in read_requests(args.input, args.load_all):
        skipped = skipped_so_far
        if requests:
            batch = client.messages.batches.create(requests=requests)  # type: ignore[arg-type]
            batch_ids.append(batch.id)

    pending = set(batch_ids)
    while pending:
        for batch_id in sorted(pending):
            if client.messages.batches.retrieve(batch_id).processing_status == "ended":
                pending.discard(batch_id)
        if pending:
            time.sleep(args.poll_interval)

    written = 0
    succeeded = 0
    with open(args.output, "w", encoding="utf-8") as out:
        for batch_id in batch_ids:
            for result in client.messages.batches.results(batch_id):
                out.write(result.to_json(indent=None) + "\n")
                written += 1
                if result.result.type == "succeeded":
                    succeeded += 1
    client.close()
    summary = {"batches": len(batch_ids), "skipped": skipped, "written": written}
    summary["succeeded"] = succeeded
    print(json.dumps(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
