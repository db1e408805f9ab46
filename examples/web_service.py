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

A request the pipeline rejects (say, without ``max_tokens``) never gets a result:
its handler gives up after ``--timeout`` seconds with an error naming the
rejects file (``rejects.jsonl``), as a web handler would answer 504; the other
requests are served as usual. Against the real API a batch can take far longer
than the emulator's second: raise ``--timeout`` there.

Re-running the same command serves the same requests again and prints the same
answers: each start of the service begins a new job (the state file of the last
one is discarded), unless the last one left work behind (the service crashed
with batches in flight or retries waiting): then it resumes that job and
collects those batches (each answer goes to a handler waiting for its custom_id,
if any, else it is dropped).
"""

from __future__ import annotations

import argparse
import os
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from pipeline import PipelineConfig, QueuePipeline, read_status

if TYPE_CHECKING:
    from collections.abc import Callable

    from pipeline.api import ResultLine

MODEL = "claude-haiku-4-5"
#: How long a handler waits for its answer, in seconds.
DEFAULT_TIMEOUT = 60.0


class BatchedAnswers:
    """Hands out answers to the callers waiting for them, by custom_id."""

    def __init__(self) -> None:
        self._waiting: dict[str, anyio.Event] = {}
        self._answers: dict[str, str] = {}

    def expect(self, custom_id: str) -> None:
        """Register a caller, before its request goes on the queue."""
        self._waiting[custom_id] = anyio.Event()

    def forget(self, custom_id: str) -> None:
        """The caller gave up: an answer coming later is dropped."""
        self._waiting.pop(custom_id, None)
        self._answers.pop(custom_id, None)

    async def deliver(self, line: ResultLine) -> None:
        """The pipeline's output callback."""
        waiting = self._waiting.get(line.custom_id)
        if waiting is None:
            return  # its caller gave up, or is gone (a batch resumed after a crash)
        message = getattr(line.result, "message", None)  # only a succeeded result has one
        if message is not None:
            text = "".join(b.get("text", "") for b in message.content)
        else:
            text = f"<{type(line.result).__struct_config__.tag}>"
        self._answers[line.custom_id] = text
        waiting.set()

    async def wait(self, custom_id: str) -> str:
        """The answer to ``custom_id``, once it has come."""
        await self._waiting[custom_id].wait()
        del self._waiting[custom_id]
        return self._answers.pop(custom_id)


def question(i: int) -> dict[str, Any]:
    """The Messages params of the ``i``-th handler's request."""
    return {
        "model": MODEL,
        "max_tokens": 64,
        "messages": [{"role": "user", "content": f"Question {i}?"}],
    }


async def discard_idle_job(state: Path, rejects: Path) -> None:
    """Start a new job, unless the last one has work to resume (batches in flight,
    retries spooled) or is in use (the pipeline then says so)."""
    if not state.exists():
        return
    status = await read_status(state)
    if status.batches or status.spooled or status.worker_running:
        return
    for path in [*state.parent.glob(state.name + "*"), rejects]:  # -wal, .lock, .emulator
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


async def serve(
    workdir: Path,
    n: int,
    *,
    api_key: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    params: Callable[[int], dict[str, Any]] = question,
) -> dict[str, str]:
    """Run the service for ``n`` requests (``params(i)`` each); each handler's answer
    (or its error) by request id."""
    workdir.mkdir(parents=True, exist_ok=True)
    state, rejects = workdir / "service.state", workdir / "rejects.jsonl"
    await discard_idle_job(state, rejects)
    send, receive = anyio.create_memory_object_stream[dict[str, Any]](100)
    answers = BatchedAnswers()
    pipeline = QueuePipeline(
        receive,
        answers.deliver,
        rejects=rejects,
        state=state,
        config=PipelineConfig(linger_seconds=0.2),
        api_key=api_key,
    )
    got: dict[str, str] = {}

    async def handler(i: int, queue: Any) -> None:
        """What an HTTP handler does: enqueue, wait, answer (or fail clearly)."""
        custom_id = f"req-{i}"
        answers.expect(custom_id)
        with anyio.move_on_after(timeout) as deadline:
            async with queue:
                await queue.send({"custom_id": custom_id, "params": params(i)})
            got[custom_id] = await answers.wait(custom_id)
        if deadline.cancelled_caught:
            answers.forget(custom_id)
            got[custom_id] = (
                f"error: no answer within {timeout:g} s: the pipeline rejected the request "
                f"(see {rejects}) or its batch is still running"
            )

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
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT,
        help=f"seconds a handler waits for its answer (default {DEFAULT_TIMEOUT:g})",
    )
    args = parser.parse_args()
    api_key = os.environ.get("ANTHROPIC_API_KEY")
    got = anyio.run(
        lambda: serve(args.workdir, args.requests, api_key=api_key, timeout=args.timeout)
    )
    for custom_id in sorted(got, key=lambda c: int(c.split("-")[1]))[:5]:
        print(f"{custom_id}: {got[custom_id]}")
    failed = sum(answer.startswith("error: ") for answer in got.values())
    print(f"... {len(got) - failed} requests answered through the batch pipeline, {failed} failed")


if __name__ == "__main__":
    main()
