"""User stages stay crash-safe: SIGKILL at 20+ random moments, then run to the end.

A pipeline definition (``pipeline worker def.py``) reads records from a list, drops
some with a filter, reorders them in groups with a general stage that holds them,
builds a request from each, and turns each result, joined with its request and
record, into an output record of its own, routing every fifth to a second sink. The emulator (its own process) fails 5%
of requests, so retries happen. After the last run: every kept record has exactly
one output, the answer to the request the builder made from it; the emulator
received exactly the builder's custom_ids, each as many times as the ledger's
attempts (nothing paid twice); nothing filtered was sent.
"""

from __future__ import annotations

import os
import random
from typing import TYPE_CHECKING

import msgspec
import pytest

from pipeline.testing import reply_text, start_emulator_process

from .ledger.jobs import (
    KillTrigger,
    recorded_attempts,
    run_until_killed,
    size,
    start_definition,
    submissions,
)

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = pytest.mark.slow

RECORDS = 2400
KILLS = 21
MAX_ATTEMPTS = 3
SEED = int(os.environ.get("CRASH_SEED", "20261206"))

DEFINITION = """
from pipeline import Pipeline, PipelineConfig
from pipeline.stages import Routed, build_requests, on_records, process_results

RECORDS = [{{"id": f"rec-{{i:05d}}", "topic": f"topic {{i}}"}} for i in range({records})]


def keep(record):
    return None if int(record["id"][4:]) % 7 == 3 else record


async def reorder(receive, send, /):
    held = []
    async with receive, send:
        async for record in receive:
            held.append(record)
            if len(held) == 13:
                for r in reversed(held):
                    await send.send(r)
                held.clear()
        for r in reversed(held):
            await send.send(r)


def build(record):
    return {{
        "custom_id": record["id"],
        "params": {{
            "model": "claude-3-haiku-20240307",
            "max_tokens": 64,
            "messages": [{{"role": "user", "content": "Tell me about " + record["topic"]}}],
        }},
    }}


def process(joined):
    out = {{
        "id": joined.record["id"],
        "prompt": joined.request["params"]["messages"][0]["content"],
        "text": joined.text,
    }}
    # a router: every fifth record's output goes to a second sink
    return Routed("fifths", out) if int(joined.record["id"][4:]) % 5 == 0 else out


pipeline = Pipeline(
    RECORDS,
    "out.jsonl",
    state="job.state",
    stages=[
        on_records(keep),
        on_records(reorder),
        build_requests(build),
        process_results(process, routes={{"fifths": "fifths.jsonl"}}),
    ],
    config=PipelineConfig(
        max_batch_requests=40,
        max_in_flight=120,
        linger_seconds=0.05,
        poll_interval=0.05,
        dry_run="off",
        max_attempts={attempts},
    ),
)
"""


async def test_user_stages_under_sigkill_give_each_output_once_and_pay_once(
    tmp_path: Path,
) -> None:
    definition = tmp_path / "def.py"
    definition.write_text(DEFINITION.format(records=RECORDS, attempts=MAX_ATTEMPTS))
    kept = [f"rec-{i:05d}" for i in range(RECORDS) if i % 7 != 3]
    out, state = tmp_path / "out.jsonl", tmp_path / "job.state"
    rng = random.Random(SEED)
    emulator = ["--batch-seconds", "0.3", "--request-error-rate", "0.05"]
    with start_emulator_process(*emulator, "--seed", str(SEED)) as url:
        kills = 0
        while kills < KILLS:
            trigger = KillTrigger(rng, out, state, total=len(kept), kills_left=KILLS - kills)
            if await run_until_killed(start_definition(url, definition), trigger):
                break
            kills += 1
        worker = start_definition(url, definition)
        _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err.decode()
        submitted = await submissions(url)
    assert kills >= 20, f"the job finished after {kills} kills: make it longer"
    assert size(out) > 0

    main = [msgspec.json.decode(line) for line in out.read_bytes().splitlines()]
    routed = [
        msgspec.json.decode(line) for line in (tmp_path / "fifths.jsonl").read_bytes().splitlines()
    ]
    assert all(int(o["id"][4:]) % 5 == 0 for o in routed)
    assert all(int(o["id"][4:]) % 5 for o in main)
    got = main + routed
    ids = [o["id"] for o in got]
    assert len(ids) == len(set(ids)), "an output was written twice"
    assert sorted(ids) == kept, "a kept record has no output, or a filtered one has"
    for o in got:  # the answer to the builder's request for that very record
        assert o["prompt"] == f"Tell me about topic {int(o['id'][4:])}"
        if o["text"] is not None:
            assert o["text"] == " ".join(reply_text(o["prompt"]))
    assert sum(o["text"] is not None for o in got) > 0.95 * len(got)

    attempts = await recorded_attempts(state, list(submitted))
    assert set(submitted) == set(kept), "the emulator got a request no builder made"
    overpaid = {c: (n, attempts[c]) for c, n in submitted.items() if n != attempts[c]}
    assert overpaid == {}, "submitted more (or fewer) times than the attempts recorded"
    assert max(submitted.values()) > 1  # retries happened
