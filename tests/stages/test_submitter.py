"""The submitter against the emulator on loopback: a 413 re-splits, a refused batch
becomes rejects, a create of unknown outcome is reconciled and never sent twice."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline._config import PipelineConfig
from pipeline._errors import CreateOutcomeUnknownError
from pipeline._pipeline import Pipeline
from pipeline.api._client import Client
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.api._types import MessageBatch

MODEL = "claude-3-haiku-20240307"
CONFIG = PipelineConfig(
    max_batch_requests=10,
    max_in_flight=100,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",
)


def line(cid: str, text: str = "hello") -> bytes:
    params = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": text}]}
    return msgspec.json.encode({"custom_id": cid, "params": params})


def write(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"\n".join(lines) + b"\n")


def ids_in(path: Path) -> list[str]:
    return [msgspec.json.decode(x)["custom_id"] for x in path.read_bytes().splitlines()]


def rejects_in(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [msgspec.json.decode(x) for x in path.read_bytes().splitlines()]


async def run(tmp_path: Path, client: Any, config: PipelineConfig = CONFIG) -> Any:
    pipeline = Pipeline(tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=config, client=client)
    with anyio.fail_after(20):
        return await pipeline.run()


async def test_a_413_resplits_the_batch_and_every_request_ends_once(tmp_path: Path) -> None:
    ids = [f"r-{i:03d}" for i in range(40)]
    lines = [line(cid, f"question number {cid}") for cid in ids]
    big = line("too-big", "x" * 2500)  # fits the pipeline's limit, not the service's
    write(tmp_path / "in.jsonl", [*lines[:17], big, *lines[17:]])
    size = len(lines[0])
    # the service takes ~4 requests per body; the pipeline packs 10 (and up to 16 KB)
    emu_config = EmulatorConfig(batch_seconds=0.0, max_batch_bytes=4 * size + 20)
    config = msgspec.structs.replace(CONFIG, max_batch_bytes=16_000)
    async with serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            stats = await run(tmp_path, client, config)
        submissions = emu.submissions()
    assert sorted(ids_in(tmp_path / "out.jsonl")) == ids  # each exactly once
    assert submissions == dict.fromkeys(ids, 1)  # none paid twice, the big one never
    assert stats.finished
    assert stats.batches_submitted >= 10  # 40 requests, <= 4 per accepted body
    [reject] = rejects_in(tmp_path / "out.rejects.jsonl")
    assert reject["line"] == 18
    assert reject["custom_id"] == "too-big"
    assert reject["error"]["type"] == "request_too_large"
    assert "maximum size" in reject["error"]["message"]  # the service's own words


async def test_a_refused_batch_becomes_rejects_and_the_job_goes_on(tmp_path: Path) -> None:
    ids = [f"r-{i:03d}" for i in range(25)]
    write(tmp_path / "in.jsonl", [line(cid) for cid in ids])
    # chunks of 10, 10, 5: the service refuses any batch of more than 8
    emu_config = EmulatorConfig(batch_seconds=0.0, max_batch_requests=8)
    async with serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            stats = await run(tmp_path, client)
        submissions = emu.submissions()
    written = sorted(ids_in(tmp_path / "out.jsonl"))
    rejects = rejects_in(tmp_path / "out.rejects.jsonl")
    assert written == ids[20:]
    assert [r["custom_id"] for r in rejects] == ids[:20]
    assert [r["line"] for r in rejects] == list(range(1, 21))
    assert {r["error"]["type"] for r in rejects} == {"invalid_request_error"}
    assert all("more than the limit of 8" in r["error"]["message"] for r in rejects)
    assert sorted(submissions) == ids[20:]
    assert stats.finished
    assert stats.rejected == 20
    assert stats.written == 5


class DroppingClient:
    """A real client whose first create (or first ``drops`` creates) loses its answer:
    ``reach=True``: the create reached the service, which made the batch;
    ``reach=False``: it never got there. Either way the caller sees an unknown
    outcome, as after a read timeout."""

    def __init__(self, client: Client, *, reach: bool, drops: int = 1) -> None:
        self._client = client
        self.reach = reach
        self.drops = drops
        self.creates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def create_batch(self, body: bytes, *, request_count: int) -> MessageBatch:
        self.creates += 1
        if self.creates > self.drops:
            return await self._client.create_batch(body, request_count=request_count)
        sent_at = time.time()
        if self.reach:
            await self._client.create_batch(body, request_count=request_count)
        raise CreateOutcomeUnknownError(
            request_count=request_count, body_bytes=len(body), sent_at=sent_at, cause="dropped"
        )


@pytest.mark.parametrize("reach", [True, False], ids=["created", "not-created"])
async def test_an_unknown_outcome_create_is_reconciled_never_sent_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reach: bool
) -> None:
    monkeypatch.setenv("PIPELINE_RECONCILE_SETTLE_SECONDS", "0")
    ids = [f"r-{i:03d}" for i in range(30)]
    write(tmp_path / "in.jsonl", [line(cid) for cid in ids])
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "emu") as emu:
        async with Client(api_key="k", base_url=emu.url) as real:
            client = DroppingClient(real, reach=reach, drops=2)
            stats = await run(tmp_path, client)
        submissions = emu.submissions()
        batches = emu.state.stats.batches_created
    assert sorted(ids_in(tmp_path / "out.jsonl")) == ids
    assert submissions == dict.fromkeys(ids, 1)  # adopted or re-sent, never both
    assert stats.finished
    assert client.creates == 3 + (0 if reach else 2)  # released intents were sent again
    assert batches == 3
