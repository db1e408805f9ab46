"""An async service that embeds a pipeline and feeds it from a queue.

Run (no API key needed: the embedded emulator answers):

    python examples/web_service.py --workdir /tmp/service --requests 40

A plain anyio program standing in for a web app: "handlers" (concurrent tasks,
as an ASGI app's request handlers would be) each put one prompt on a queue and
await its answer. The queue (an anyio memory object stream) is the pipeline's
source, through ``QueuePipeline``, which sends entries on as they arrive; the
output is a callback that hands each result to the handler waiting for its
custom_id. Closing the queue (the service shutting down) ends the pipeline once
everything in flight has come back.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

import anyio

from pipeline import PipelineConfig, QueuePipeline
from pipeline.api._types import ResultLine, SucceededResult

MODEL = "claude-3-haiku-20240307"


class BatchedAnswers:
    """Hands out answers to the callers waiting for them, by custom_id."""

    def __init__(self) -> None:
        self._waiting: dict[str, anyio.Event] = {}
        self._answers: dict[str, str] = {}

    def expect(self, custom_id: str) -> anyio.Event:
        event = self._waiting[custom_id] = anyio.Event()
        return event

    async def deliver(self, line: ResultLine) -> None:
        """The pipeline's output callback."""
        result = line.result
        if isinstance(result, SucceededResult):
            text = "".join(b.get("text", "") for b in result.message.content)
        else:
            text = f"<{type(result).__name__}>"
        self._answers[line.custom_id] = text
        self._waiting.pop(line.custom_id).set()

    def answer(self, custom_id: str) -> str:
        return self._answers.pop(custom_id)


async def serve(workdir: Path, n: int, *, api_key: str | None = None) -> dict[str, str]:
    """Run the service for ``n`` requests; each handler's answer by request id."""
    workdir.mkdir(parents=True, exist_ok=True)
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](100)
    answers = BatchedAnswers()
    pipeline = QueuePipeline(
        receive,
        answers.deliver,
        state=workdir / "service.state",
        config=PipelineConfig(linger_seconds=0.2),
        api_key=api_key,
    )
    got: dict[str, str] = {}

    async def handler(i: int, queue: Any) -> None:
        """What an HTTP handler does: enqueue, wait, answer."""
        custom_id = f"req-{i}"
        done = answers.expect(custom_id)
        async with queue:
            params = {
                "model": MODEL,
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"Question {i}?"}],
            }
            await queue.send({"custom_id": custom_id, "params": params})
        await done.wait()
        got[custom_id] = answers.answer(custom_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run)
        async with send:  # each handler holds a clone; the queue closes when all are done
            for i in range(n):
                tg.start_soon(handler, i, send.clone())
    return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path("examples-out/service"))
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    got = anyio.run(
        lambda: serve(args.workdir, args.requests, api_key=os.environ.get("ANTHROPIC_API_KEY"))
    )
    for custom_id in sorted(got, key=lambda c: int(c.split("-")[1]))[:5]:
        print(f"{custom_id}: {got[custom_id]}")
    print(f"... {len(got)} requests answered through the batch pipeline")


if __name__ == "__main__":
    main()
