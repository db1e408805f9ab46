"""The submitter against the emulator on loopback: a 413 re-splits, a refused batch
becomes rejects, a create of unknown outcome is reconciled and never sent twice."""

from __future__ import annotations

import importlib
import time
import tracemalloc
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline._config import PipelineConfig
from pipeline._errors import (
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    CreateOutcomeUnknownError,
    InternalServerError,
    OverloadedError,
    RateLimitError,
)
from pipeline._pipeline import Pipeline
from pipeline.api._client import Client
from pipeline.api._types import MessageBatch as MessageBatchType
from pipeline.ledger._base import ClaimResult
from pipeline.stages import Capacity, Chunk, JobCounters
from pipeline.stages._items import Entry, SubmittedBatch
from pipeline.stages.submitter import submitter
from pipeline.testing import EmulatorConfig, serve_emulator, start_emulator_process

if TYPE_CHECKING:
    from pathlib import Path

    from anyio.abc import TaskGroup
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

    from pipeline.api import SplicedBody
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

    async def create_batch(self, body: bytes | SplicedBody, *, request_count: int) -> MessageBatch:
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


# -- creates the service refuses for now: back off and try again ------------------


class RefusingClient:
    """Refuses the first creates with ``errors`` (after the client's own retries,
    as the submitter sees them), then creates the batch."""

    def __init__(self, errors: list[Exception]) -> None:
        self.errors = list(errors)
        self.bodies: list[bytes | SplicedBody] = []

    async def create_batch(self, body: bytes | SplicedBody, *, request_count: int) -> MessageBatch:
        self.bodies.append(body)
        if self.errors:
            raise self.errors.pop(0)
        return msgspec.convert(
            {
                "id": f"msgbatch_{len(self.bodies)}",
                "processing_status": "in_progress",
                "request_counts": {"processing": request_count},
                "created_at": "2024-01-01T00:00:00Z",
                "expires_at": "2024-01-02T00:00:00Z",
            },
            MessageBatchType,
        )


class RecordingLedger:
    """The ledger calls the submitter makes, in order."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    async def claim(self, entries: Any, rejects: Any, *, checkpoint: int, line: int) -> Any:
        self.calls.append("claim")
        return ClaimResult(local_id=1, duplicates=[])

    async def record_sending(self, local_id: int, *, body_bytes: int, sent_at: float) -> None:
        self.calls.append("sending")

    async def record_created(self, local_id: int, batch_id: str) -> None:
        self.calls.append("created")

    async def release(self, local_id: int) -> None:
        self.calls.append("release")


def refused(status: int) -> Exception:
    kind = {429: RateLimitError, 500: InternalServerError, 529: OverloadedError}
    cls = kind.get(status, APIStatusError)
    return cls(status_code=status, error_type="overloaded_error", message="try later")


def start_submitter(
    tg: TaskGroup,
    client: Any,
    ledger: Any,
    *,
    config: PipelineConfig,
    capacity: int,
    progress: JobCounters,
    **options: Any,
) -> tuple[MemoryObjectSendStream[Chunk], MemoryObjectReceiveStream[list[SubmittedBatch]]]:
    """``submitter`` started in ``tg``: the stream to send it chunks, and the one its
    batches come out of."""
    send_in, recv_in = anyio.create_memory_object_stream[Chunk](2)
    send_out, recv_out = anyio.create_memory_object_stream[list[SubmittedBatch]](4)
    tg.start_soon(
        lambda: submitter(
            recv_in,
            send_out,
            client=client,
            ledger=ledger,
            config=config,
            capacity=Capacity(capacity),
            progress=progress,
            **options,
        )
    )
    return send_in, recv_out


async def submit_one(
    client: Any, *, on_sleep: Any = None, max_backoff: float = 10.0
) -> tuple[list[SubmittedBatch], list[float], RecordingLedger, JobCounters]:
    """One chunk of 3 entries through ``submitter`` with a virtual sleep."""
    sleeps: list[float] = []
    progress = JobCounters()
    progress.outstanding = 3

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        if on_sleep is not None:
            on_sleep(progress)
        await anyio.lowlevel.checkpoint()

    ledger = RecordingLedger()
    entries = [Entry(i, f"c-{i}", line(f"c-{i}")) for i in range(1, 4)]
    config = msgspec.structs.replace(CONFIG, max_create_backoff=max_backoff)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            send_in, recv_out = start_submitter(
                tg, client, ledger, config=config, capacity=100, progress=progress, sleep=sleep
            )
            async with send_in:
                await send_in.send(Chunk(entries, [], checkpoint=0, line=3))
            async with recv_out:
                batches = [b async for chunk in recv_out for b in chunk]
    return batches, sleeps, ledger, progress


async def test_a_create_body_is_streamed_from_the_entries_not_joined_whole() -> None:
    # 400 requests of 40 KB (a 16 MB body) to an emulator in its own process (its
    # memory is not traced): the submitter holds a piece of the body at a time, not a
    # joined copy next to the entries (which are built before tracing starts)
    entries = [Entry(i, f"c-{i}", line(f"c-{i}", "x" * 40_000)) for i in range(1, 401)]
    size = sum(len(e.raw) for e in entries)
    ledger = RecordingLedger()
    progress = JobCounters()
    progress.outstanding = len(entries)
    config = msgspec.structs.replace(CONFIG, max_batch_requests=400, max_in_flight=400)
    with start_emulator_process("--batch-seconds", "3600") as url:
        async with Client(api_key="k", base_url=url) as client:
            tracemalloc.start()
            try:
                async with anyio.create_task_group() as tg:
                    send_in, recv_out = start_submitter(
                        tg, client, ledger, config=config, capacity=400, progress=progress
                    )
                    async with send_in:
                        await send_in.send(Chunk(entries, [], checkpoint=0, line=400))
                    async with recv_out:
                        batches = [b async for chunk in recv_out for b in chunk]
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
            created = await client.retrieve_batch(batches[0].batch_id)
    assert created.request_counts.processing == 400  # every request arrived, parsed
    assert size > 16_000_000
    assert peak < size // 4, f"{peak:,} bytes traced for a {size:,}-byte body"


async def test_a_create_refused_for_now_is_tried_again_with_capped_exponential_backoff() -> None:
    errors = [refused(429), refused(500), APIConnectionError("refused"), refused(529)]
    errors += [refused(503), refused(408)]
    client = RefusingClient(errors)
    batches, sleeps, ledger, progress = await submit_one(client, max_backoff=10.0)
    assert [b.batch_id for b in batches] == ["msgbatch_7"]  # the job goes on
    assert sleeps == [2.0, 4.0, 8.0, 10.0, 10.0, 10.0]  # doubling, capped
    assert len({bytes(b) for b in client.bodies}) == 1  # the same body every time
    # each try is recorded as sending first (crash-safe), never released or spooled
    assert ledger.calls == ["claim", *["sending"] * 7, "created"]
    assert progress.spooled == 0
    assert progress.submitted == 3


async def test_a_stop_during_the_backoff_spools_the_requests() -> None:
    def stop(progress: JobCounters) -> None:
        progress.stopping = True

    client = RefusingClient([refused(429)] * 10)
    batches, sleeps, ledger, progress = await submit_one(client, on_sleep=stop)
    assert batches == []
    assert sleeps == [2.0]
    assert ledger.calls == ["claim", "sending", "release"]
    assert progress.spooled == 3
    assert progress.outstanding == 0


async def test_an_auth_error_on_create_still_fails_the_job() -> None:
    client = RefusingClient(
        [AuthenticationError(status_code=401, error_type="authentication_error", message="no")]
    )
    with pytest.raises(ExceptionGroup) as info:
        await submit_one(client)
    assert info.group_contains(AuthenticationError)
    assert len(client.bodies) == 1  # not tried again


class OutageClient:
    """A real client in front of the emulator whose first creates fail with 529
    (as they would after the client's own retries ran out)."""

    def __init__(self, client: Client, *, outage: int) -> None:
        self._client = client
        self.outage = outage
        self.creates = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._client, name)

    async def create_batch(self, body: bytes | SplicedBody, *, request_count: int) -> MessageBatch:
        self.creates += 1
        if self.creates <= self.outage:
            raise refused(529)
        return await self._client.create_batch(body, request_count=request_count)


async def test_a_job_rides_out_an_outage_of_creates_and_pays_each_request_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the pipeline's real sleep, with a tiny first back-off
    monkeypatch.setattr(
        importlib.import_module("pipeline.stages.submitter"), "FIRST_CREATE_BACKOFF", 0.001
    )
    ids = [f"r-{i:03d}" for i in range(30)]
    write(tmp_path / "in.jsonl", [line(cid) for cid in ids])
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "emu") as emu:
        async with Client(api_key="k", base_url=emu.url) as real:
            client = OutageClient(real, outage=4)
            stats = await run(tmp_path, client)
        submissions = emu.submissions()
    assert sorted(ids_in(tmp_path / "out.jsonl")) == ids
    assert submissions == dict.fromkeys(ids, 1)
    assert stats.finished
    assert client.creates == 3 + 4


class GatedClient(RefusingClient):
    """Each create waits until the test opens its gate."""

    def __init__(self) -> None:
        super().__init__([])
        self.gates: list[anyio.Event] = []
        self.started = anyio.Event()

    async def create_batch(self, body: bytes | SplicedBody, *, request_count: int) -> MessageBatch:
        gate = anyio.Event()
        self.gates.append(gate)
        self.started.set()
        await gate.wait()
        return await super().create_batch(body, request_count=request_count)


class OrderedLedger(RecordingLedger):
    """A ``RecordingLedger`` that numbers its intents and notes each claim's checkpoint."""

    def __init__(self) -> None:
        super().__init__()
        self.checkpoints: list[int] = []
        self.claimed = anyio.Event()

    async def claim(self, entries: Any, rejects: Any, *, checkpoint: int, line: int) -> Any:
        self.calls.append("claim")
        self.checkpoints.append(checkpoint)
        if len(self.checkpoints) == 2:
            self.claimed.set()
        return ClaimResult(local_id=len(self.checkpoints), duplicates=[])


@pytest.mark.parametrize("low_memory", [False, True])
async def test_the_next_chunk_is_claimed_while_a_create_is_under_way(low_memory: bool) -> None:
    # two chunks: the second is claimed (in order, after the first) while the first
    # batch's create waits at the service, so the create's round trip and the ledger's
    # claim overlap; one create at a time all the same. With low memory, the submitter
    # takes the next chunk only once the last is created (one chunk at a time).
    client = GatedClient()
    ledger = OrderedLedger()
    progress = JobCounters()
    progress.outstanding = 6
    config = msgspec.structs.replace(CONFIG, low_memory=low_memory)
    chunks = [
        Chunk([Entry(i, f"c-{i}", line(f"c-{i}")) for i in range(k, k + 3)], [], k * 100, k + 2)
        for k in (1, 4)
    ]
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            send_in, recv_out = start_submitter(
                tg, client, ledger, config=config, capacity=100, progress=progress
            )
            async with send_in:
                for chunk in chunks:
                    await send_in.send(chunk)
            await client.started.wait()
            if low_memory:
                for _ in range(10):  # the submitter has every chance to claim ahead
                    await anyio.lowlevel.checkpoint()
                assert ledger.checkpoints == [100]
            else:
                await ledger.claimed.wait()  # the second claim, the first create still waiting
                assert ledger.checkpoints == [100, 400]
            assert len(client.gates) == 1  # one create at a time
            client.gates[0].set()
            while len(client.gates) < 2:
                await anyio.lowlevel.checkpoint()
            client.gates[1].set()
            async with recv_out:
                batches = [b async for group in recv_out for b in group]
    assert ledger.checkpoints == [100, 400]
    assert [(b.local_id, b.batch_id) for b in batches] == [(1, "msgbatch_1"), (2, "msgbatch_2")]
    one = ["claim", "sending", "created"]
    assert ledger.calls == (one * 2 if low_memory else ["claim", *one, *one[1:]])
