"""Memory and speed check of the emulator at scale (run by hand, not collected by pytest).

    python tests/emulator/_memcheck.py [BATCHES] [PER_BATCH]

Starts ``python -m pipeline emulator`` in its own process, pushes BATCHES batches of
PER_BATCH requests through create / retrieve / results download, and prints the
emulator's peak RSS (VmHWM from /_emulator/stats) after each tenth of the run, so
flat memory shows as a flat column whether 100k or 1M requests went through.
"""

from __future__ import annotations

import sys
import time

import anyio
import httpx

from pipeline.testing import start_emulator_process

LINE = (
    b'{"custom_id":"b%d-r%d","params":{"model":"claude-3-haiku-20240307","max_tokens":64,'
    b'"messages":[{"role":"user","content":"question %d about something"}]}}'
)


def body(batch: int, n: int) -> bytes:
    return b'{"requests":[' + b",".join(LINE % (batch, i, i) for i in range(n)) + b"]}"


async def run(url: str, batches: int, per_batch: int) -> None:
    async with httpx.AsyncClient(
        base_url=url, headers={"x-api-key": "k", "anthropic-version": "2023-06-01"}, timeout=600
    ) as http:
        start = time.perf_counter()
        for b in range(batches):
            created = (await http.post("/v1/messages/batches", content=body(b, per_batch))).json()
            batch = (await http.get(f"/v1/messages/batches/{created['id']}")).json()
            assert batch["request_counts"]["succeeded"] == per_batch, batch
            size = 0
            async with http.stream("GET", batch["results_url"]) as response:
                async for chunk in response.aiter_raw():
                    size += len(chunk)
            if (b + 1) % max(1, batches // 10) == 0:
                stats = (await http.get("/_emulator/stats")).json()
                done = (b + 1) * per_batch
                rate = done / (time.perf_counter() - start)
                print(
                    f"{done:>9} requests  vmhwm {stats['vmhwm_kib'] / 1024:7.1f} MiB  "
                    f"vmrss {stats['vmrss_kib'] / 1024:7.1f} MiB  {rate:8.0f} req/s",
                    flush=True,
                )


def main() -> None:
    batches = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    per_batch = int(sys.argv[2]) if len(sys.argv) > 2 else 10_000
    with start_emulator_process("--batch-seconds", "0") as url:
        anyio.run(run, url, batches, per_batch)


if __name__ == "__main__":
    main()
