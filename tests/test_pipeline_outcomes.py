"""Outcomes decided at the service, end to end through the emulator on loopback:
an errored request is a final outcome (written, counted, not retried), and canceled
requests follow the ``canceled`` policy: written as such, or sent again."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from pipeline._config import PipelineConfig
from pipeline._pipeline import Pipeline
from pipeline.api._client import Client
from pipeline.api._schema import DEFAULT_MODELS
from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline._stats import PipelineStatistics

HAIKU = "claude-3-haiku-20240307"
OPUS = "claude-3-opus-20240229"
CONFIG = PipelineConfig(
    max_batch_requests=5,
    max_in_flight=50,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",
)


def write_input(path: Path, ids: list[str], model: str = HAIKU) -> None:
    lines = [
        msgspec.json.encode(
            {
                "custom_id": cid,
                "params": {
                    "model": model if not cid.startswith("opus") else OPUS,
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"about {cid}"}],
                },
            }
        )
        for cid in ids
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


def results(path: Path) -> dict[str, str]:
    """custom_id -> result type (with the error type for errored ones)."""
    out = {}
    for raw in path.read_bytes().splitlines():
        line = msgspec.json.decode(raw)
        result = line["result"]
        kind = result["type"]
        if kind == "errored":
            kind += ":" + result["error"]["error"]["type"]
        out[line["custom_id"]] = kind
    return out


async def test_a_request_the_service_refuses_is_a_final_counted_outcome(tmp_path: Path) -> None:
    # Opus passes local checks; this deployment does not serve it, and with the
    # dry run off only the service can say so: in the batch's results.
    ids = [f"ok-{i}" for i in range(6)] + [f"opus-{i}" for i in range(3)]
    write_input(tmp_path / "in.jsonl", ids)
    emu_config = EmulatorConfig(batch_seconds=0.0, models=DEFAULT_MODELS - {OPUS})
    async with serve_emulator(emu_config) as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=CONFIG, client=client
            )
            with anyio.fail_after(30):
                stats = await pipeline.run()
        submissions = emu.submissions()
    assert stats.finished
    got = results(tmp_path / "out.jsonl")
    assert got == {
        **{f"ok-{i}": "succeeded" for i in range(6)},
        **{f"opus-{i}": "errored:not_found_error" for i in range(3)},
    }
    assert submissions == dict.fromkeys(ids, 1)  # not retried: retrying cannot help
    assert stats.outcomes == {"succeeded": 6, "errored:not_found_error": 3}


async def run_with_a_cancel(
    tmp_path: Path, policy: str
) -> tuple[PipelineStatistics, dict[str, int]]:
    """Run 10 requests in 2 batches; someone cancels the first batch at the service
    before it is processed; then the emulator's time moves on and the rest ends."""
    ids = [f"c-{i}" for i in range(10)]
    write_input(tmp_path / "in.jsonl", ids)
    config = msgspec.structs.replace(CONFIG, canceled=policy)
    emu_config = EmulatorConfig(batch_seconds=100.0, clock=ManualClock())
    async with serve_emulator(emu_config) as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=config, client=client
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipeline.run)
                with anyio.fail_after(30):
                    while pipeline.statistics().submitted < 10:
                        await anyio.sleep(0.01)
                    first = (await client.list_batches_page()).data[-1]  # the oldest
                    await client.cancel_batch(first.id)
                    while pipeline.statistics().ended < 5:  # the canceled batch ended
                        await anyio.sleep(0.01)
                    emu.advance(100.0)  # the other batch (and any re-sent one) ends
                    while not pipeline.statistics().finished:
                        await anyio.sleep(0.01)
                        if pipeline.statistics().submitted > 10:
                            emu.advance(100.0)
        return pipeline.statistics(), emu.submissions()


async def test_canceled_requests_are_final_by_default(tmp_path: Path) -> None:
    stats, submissions = await run_with_a_cancel(tmp_path, "final")
    got = results(tmp_path / "out.jsonl")
    assert sorted(got.values()) == ["canceled"] * 5 + ["succeeded"] * 5
    assert set(submissions.values()) == {1}
    assert stats.outcomes == {"canceled": 5, "succeeded": 5}


async def test_canceled_requests_are_sent_again_with_the_retry_policy(tmp_path: Path) -> None:
    stats, submissions = await run_with_a_cancel(tmp_path, "retry")
    got = results(tmp_path / "out.jsonl")
    assert sorted(got.values()) == ["succeeded"] * 10
    assert sorted(submissions.values()) == [1] * 5 + [2] * 5
    assert stats.outcomes == {"succeeded": 10}


async def test_a_batch_the_service_does_not_know_stops_the_job_with_the_way_out(
    tmp_path: Path,
) -> None:
    from pipeline._errors import BatchNotFoundError, StageError
    from pipeline.cli import main

    ids = [f"g-{i}" for i in range(5)]
    write_input(tmp_path / "in.jsonl", ids)
    paths = (tmp_path / "in.jsonl", tmp_path / "out.jsonl")
    emu_config = EmulatorConfig(batch_seconds=100.0, clock=ManualClock())
    async with serve_emulator(emu_config) as emu:
        async with Client(api_key="workspace-a", base_url=emu.url) as client:
            pipeline = Pipeline(*paths, config=CONFIG, client=client)
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pipeline.run)
                    with anyio.fail_after(30):
                        while pipeline.statistics().submitted < 5:
                            await anyio.sleep(0.01)
                    scope.cancel()  # the worker dies with the batch in flight
        # restarted with another workspace's key: the batch is not there
        async with Client(api_key="workspace-b", base_url=emu.url) as client:
            pipeline = Pipeline(*paths, config=CONFIG, client=client)
            with anyio.fail_after(30), pytest.raises(StageError) as info:
                await pipeline.run()
        cause = info.value.__cause__
        assert isinstance(cause, BatchNotFoundError)
        assert "--abandon 1" in str(cause)
        assert "API key" in str(cause)
        # the operator decides it is gone for good: its requests are sent again
        state = str(tmp_path / "out.jsonl.state")
        command = ["status", "--state", state, "--abandon", str(cause.local_id)]
        assert await anyio.to_thread.run_sync(main, command) == 0  # the CLI runs its own loop
        async with Client(api_key="workspace-b", base_url=emu.url) as client:
            pipeline = Pipeline(*paths, config=CONFIG, client=client)
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipeline.run)
                with anyio.fail_after(30):
                    while not pipeline.statistics().finished:
                        emu.advance(100.0)
                        await anyio.sleep(0.01)
        submissions = emu.submissions()
    assert sorted(results(tmp_path / "out.jsonl")) == ids
    assert submissions == dict.fromkeys(ids, 2)  # paid again, as the operator chose
