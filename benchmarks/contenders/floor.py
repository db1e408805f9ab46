"""The msgspec-only floor: the least code that does the job fast, no framework.

Submit: read the file in 1 MiB chunks, split lines, decode each into a small Struct
(which checks the fields a batch needs and their types), splice the raw line bytes
into ``{"requests":[...]}`` bodies of up to 10,000 requests / 32 MB, POST with httpx.
Then poll each batch until it ended, stream its results in the transport's chunks,
split lines, decode each with msgspec (routing by result type) and write JSONL.

Applies PERFORMANCE.md's httpx trap fix (``gc.freeze()`` at start, a full
``gc.collect()`` after each create), so its memory stays flat.

``python benchmarks/contenders/floor.py --input IN --output OUT --base-url URL``
prints a JSON summary on stdout.
"""

from __future__ import annotations

import argparse
import gc
import sys
import time
from typing import BinaryIO

import httpx
import msgspec

MAX_REQUESTS = 10_000
MAX_BYTES = 32_000_000
CHUNK = 1 << 20


class Params(msgspec.Struct):
    model: str
    max_tokens: int
    messages: list[msgspec.Raw]


class Request(msgspec.Struct):
    custom_id: str
    params: Params


class Batch(msgspec.Struct):
    id: str
    processing_status: str
    results_url: str | None = None


class Result(msgspec.Struct):
    type: str


class ResultLine(msgspec.Struct):
    custom_id: str
    result: Result


request_decoder = msgspec.json.Decoder(Request)
batch_decoder = msgspec.json.Decoder(Batch)
result_decoder = msgspec.json.Decoder(ResultLine)


def read_lines(path: str):  # type: ignore[no-untyped-def]
    """Yield the lines of each 1 MiB chunk, as lists of bytes without terminators."""
    tail = b""
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            parts = (tail + chunk).split(b"\n")
            tail = parts.pop()
            yield parts
    if tail:
        yield [tail]


def submit(client: httpx.Client, path: str) -> tuple[list[str], int]:
    """POST every valid line; the batch ids and the number of skipped lines."""
    ids: list[str] = []
    skipped = 0
    body: list[bytes] = []
    size = 0

    def post() -> None:
        nonlocal size
        response = client.post("/v1/messages/batches", content=b"".join(body) + b"]}")
        response.raise_for_status()
        ids.append(batch_decoder.decode(response.content).id)
        body.clear()
        size = 0
        gc.collect()

    for lines in read_lines(path):
        for line in lines:
            if not line:
                continue
            try:
                request_decoder.decode(line)
            except msgspec.DecodeError:
                skipped += 1
                continue
            if len(body) >= MAX_REQUESTS or size + len(line) + 16 > MAX_BYTES:
                post()
            body.append(b"," + line if body else b'{"requests":[' + line)
            size += len(line) + 1
    if body:
        post()
    return ids, skipped


def write(out: BinaryIO, lines: list[bytes], written: int, succeeded: int) -> tuple[int, int]:
    """Decode and route each result line, then write the lines as JSONL."""
    kept = [line for line in lines if line.strip()]
    for line in kept:
        if result_decoder.decode(line).result.type == "succeeded":
            succeeded += 1
    if kept:
        out.write(b"\n".join(kept) + b"\n")
    return written + len(kept), succeeded


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--input", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--poll-interval", type=float, default=1.0)
    args = parser.parse_args(argv)

    gc.freeze()
    headers = {"x-api-key": "bench-key", "anthropic-version": "2023-06-01"}
    timeout = httpx.Timeout(600.0, connect=10.0)
    written = succeeded = 0
    with httpx.Client(base_url=args.base_url, headers=headers, timeout=timeout) as client:
        ids, skipped = submit(client, args.input)
        urls: dict[str, str] = {}
        while len(urls) < len(ids):
            for batch_id in ids:
                if batch_id not in urls:
                    batch = batch_decoder.decode(
                        client.get(f"/v1/messages/batches/{batch_id}").content
                    )
                    if batch.processing_status == "ended" and batch.results_url:
                        urls[batch_id] = batch.results_url
            if len(urls) < len(ids):
                time.sleep(args.poll_interval)
        with open(args.output, "wb") as out:
            for batch_id in ids:
                with client.stream("GET", urls[batch_id]) as response:
                    response.raise_for_status()
                    tail = b""
                    for chunk in response.iter_bytes():
                        lines = (tail + chunk).split(b"\n")
                        tail = lines.pop()
                        written, succeeded = write(out, lines, written, succeeded)
                    written, succeeded = write(out, [tail], written, succeeded)
    summary = {"batches": len(ids), "skipped": skipped, "written": written, "succeeded": succeeded}
    print(msgspec.json.encode(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
