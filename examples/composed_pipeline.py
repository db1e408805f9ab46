"""A composed pipeline definition: support tickets triaged through the Message
Batches API, with stages of our own in the standard chain.

Run it as a worker (no API key needed: the embedded emulator answers):

    python -m pipeline worker examples/composed_pipeline.py

or from a service (``await make_pipeline().run()``), or in a test with the
embedded emulator: the same definition everywhere. The stages, in order:

* ``on_records(drop_empty)``: a filter; tickets with no text are dropped
  (counted as *filtered* in the statistics, never sent);
* ``on_records(urgent_first)``: a general stage that holds a window of tickets and
  sends the urgent ones first (holding and reordering is safe: the framework, not
  this stage, keeps the checkpoints right);
* ``build_requests(build)``: a request builder, one request per ticket;
* ``process_results(triage)``: a result processor; each result, joined with its
  ticket, becomes one line ``{"ticket", "priority", "reply"}`` of
  ``triaged.jsonl``, exactly once even across crashes.

``PIPELINE_WORKDIR`` moves the output (default ``examples-out/composed``);
``PIPELINE_TICKETS`` sets how many sample tickets there are. Re-running the command
goes on with the same job; a finished job sends nothing.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline import Pipeline, PipelineConfig
from pipeline.stages import build_requests, on_records, process_results

if TYPE_CHECKING:
    from anyio.abc import ObjectReceiveStream, ObjectSendStream

    from pipeline.stages import JoinedResult, Record

MODEL = "claude-haiku-4-5"
#: tickets held by ``urgent_first`` at most
WINDOW = 20


def tickets(n: int) -> list[dict[str, Any]]:
    """Sample tickets: every fifth is urgent, every seventh has no text."""
    return [
        {
            "id": f"T{i:05d}",
            "urgent": i % 5 == 0,
            "text": "" if i % 7 == 6 else f"My order {i} has not arrived.",
        }
        for i in range(n)
    ]


def drop_empty(ticket: dict[str, Any]) -> dict[str, Any] | None:
    """A filter on records: None drops the ticket."""
    return ticket if ticket["text"].strip() else None


async def urgent_first(
    receive: ObjectReceiveStream[Record], send: ObjectSendStream[Record], /
) -> None:
    """A general stage: holds up to ``WINDOW`` tickets, sends urgent ones first."""
    held: list[Record] = []
    async with receive, send:
        async for record in receive:
            if record.value["urgent"]:
                await send.send(record)
                continue
            held.append(record)
            if len(held) >= WINDOW:
                await send.send(held.pop(0))
        for record in held:
            await send.send(record)


def build(ticket: dict[str, Any]) -> dict[str, Any]:
    """The request builder."""
    return {
        "custom_id": ticket["id"],
        "params": {
            "model": MODEL,
            "max_tokens": 200,
            "system": "You answer customer support tickets in one friendly sentence.",
            "messages": [{"role": "user", "content": ticket["text"]}],
        },
    }


def triage(joined: JoinedResult) -> dict[str, Any]:
    """The result processor: the ticket's priority and the drafted reply."""
    ticket = joined.record
    return {
        "ticket": ticket["id"],
        "priority": "urgent" if ticket["urgent"] else "normal",
        "reply": joined.text,
    }


def make_pipeline(workdir: str | os.PathLike[str] | None = None) -> Pipeline:
    """The definition: tickets -> filter -> urgent first -> requests -> triage."""
    out = Path(workdir or os.environ.get("PIPELINE_WORKDIR", "examples-out/composed"))
    out.mkdir(parents=True, exist_ok=True)
    return Pipeline(
        tickets(int(os.environ.get("PIPELINE_TICKETS", "200"))),
        out / "triaged.jsonl",
        stages=[
            on_records(drop_empty),
            on_records(urgent_first),
            build_requests(build),
            process_results(triage),
        ],
        config=PipelineConfig(linger_seconds=0.2),
        api_key=os.environ.get("ANTHROPIC_API_KEY"),
    )
