"""Canceling a job from Python (``await pipeline.cancel()``): the acceptance test of
issue 18's first item (the command line's cancel, and the budget's cancel action,
are in ``tests/cli/test_cancel.py``).

The emulator runs on a ``ManualClock``: its batches take 60 s of emulator time, so
they stay ``in_progress`` until the test moves the clock (no sleeps: the test waits
on conditions, bounded)."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio
import httpx
from prometheus_client import CollectorRegistry, generate_latest

from pipeline import Client, JobMonitor, Pipeline, PipelineConfig
from pipeline.ledger import read_status
from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator
from tests._helpers import (
    SECRET_KEY,
    batch_statuses,
    output_outcomes,
    quick,
    samples,
    value,
    wait_for,
    write_requests,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from pathlib import Path

    from pipeline.testing import EmulatorHandle

REQUESTS = 50_000


def _Registry(collector: object) -> CollectorRegistry:  # noqa: N802
    registry = CollectorRegistry()
    registry.register(collector)  # type: ignore[arg-type]
    return registry


BATCH = 10_000


def _pipeline(tmp: Path, url: str, **kwargs: object) -> Pipeline:
    config = PipelineConfig(
        dry_run="off",
        poll_interval=0.05,
        linger_seconds=0.05,
        **kwargs.pop("config", {}),  # type: ignore[arg-type]
    )
    return Pipeline(
        tmp / "in.jsonl",
        tmp / "out.jsonl",
        state=tmp / "job.state",
        api_key=SECRET_KEY,
        base_url=url,
        config=config,
        **kwargs,  # type: ignore[arg-type]
    )


async def _all_canceling_or_ended(url: str, count: int) -> bool:
    batches = await batch_statuses(url)
    return len(batches) == count and all(
        b.processing_status in ("canceling", "ended") for b in batches
    )


async def test_cancel_a_50k_job_then_rerun_then_resume_canceled(tmp_path: Path) -> None:
    ids = write_requests(tmp_path / "in.jsonl", REQUESTS)
    clock = ManualClock()
    emu_config = EmulatorConfig(batch_seconds=60, clock=clock)
    async with serve_emulator(emu_config) as emu:
        pipeline = _pipeline(tmp_path, emu.url)
        metrics = JobMonitor(pipeline).collector()
        async with pipeline:
            await wait_for(_submitted(pipeline, REQUESTS), timeout=60, what="every batch created")
            emu.advance(6)  # a tenth of each 60 s batch is processed, the rest not yet
            async with anyio.create_task_group() as tg:
                seen: list[float] = []

                async def watch() -> None:
                    every = lambda: _all_canceling_or_ended(emu.url, 5)  # noqa: E731
                    seen.append(await wait_for(every, timeout=60, what="every batch canceled"))

                tg.start_soon(watch)
                stats = await pipeline.cancel()
        # every batch of the job was canceled: the emulator's clock stood still at 6 s of
        # their 60, so none could have ended by itself (a wall-time bound here flaked
        # under load: 1 run in 14)
        assert seen
        assert stats.canceled
        assert not stats.finished
        assert stats.outcomes == {"succeeded": BATCH // 10 * 5, "canceled": REQUESTS // 10 * 9}
        assert "canceled" in (stats.stopped_reason or "")
        canceled = samples(generate_latest(_Registry(metrics)).decode())
        assert value(canceled, "pipeline_batches_canceled_total") == REQUESTS // BATCH
        outcomes = output_outcomes(tmp_path / "out.jsonl")
        assert Counter(outcomes.values()) == {"succeeded": REQUESTS // 10}
        for batch in await batch_statuses(emu.url):
            assert batch.processing_status == "ended"
            assert batch.request_counts.canceled == BATCH // 10 * 9
        state = await read_status(tmp_path / "job.state")
        assert (state.cancel, state.canceled, state.batches) == ("canceled", 45_000, [])

        # a re-run says the job is canceled and sends nothing
        again = await _pipeline(tmp_path, emu.url).run()
        assert again.canceled
        assert again.outcomes == {"canceled": 45_000}
        assert "resume-canceled" in (again.stopped_reason or "")
        assert Counter(emu.submissions().values()) == {1: REQUESTS}

        # --resume-canceled sends the canceled requests again and finishes the job once
        await _resume(tmp_path, emu)
        # sent again exactly once: the succeeded ones once in all, the canceled twice
        assert Counter(emu.submissions().values()) == {1: 5_000, 2: 45_000}
    outcomes = output_outcomes(tmp_path / "out.jsonl")
    assert sorted(outcomes) == ids
    assert set(outcomes.values()) == {"succeeded"}
    assert (await read_status(tmp_path / "job.state")).finished


async def _resume(tmp: Path, emu: EmulatorHandle) -> None:
    resumed = _pipeline(tmp, emu.url, resume_canceled=True)
    async with resumed:
        await wait_for(
            lambda: _emulator_holds(emu, 95_000), timeout=60, what="the canceled sent again"
        )
        emu.advance(61)
        stats = await resumed.wait()
    assert stats.finished
    assert not stats.canceled
    assert stats.outcomes == {"succeeded": 45_000}


async def _emulator_holds(emu: EmulatorHandle, total: int) -> bool:
    return sum(emu.submissions().values()) >= total


def _submitted(
    pipeline: Pipeline, n: int, *, batches: int = REQUESTS // BATCH
) -> Callable[[], Awaitable[bool]]:
    async def check() -> bool:
        stats = pipeline.statistics()
        return stats.submitted >= n and stats.batches_in_flight == batches

    return check


class _AnswerLostOnce(httpx.AsyncBaseTransport):
    """The first cancel of each batch reaches the emulator, which cancels it, and
    then the connection breaks before its answer is read (the client asks again)."""

    def __init__(self) -> None:
        self._inner = httpx.AsyncHTTPTransport()
        self._lost: set[str] = set()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await self._inner.handle_async_request(request)
        path = request.url.path
        if path.endswith("/cancel") and path not in self._lost:
            self._lost.add(path)
            await response.aclose()
            raise httpx.ReadError("connection reset while reading the answer", request=request)
        return response

    async def aclose(self) -> None:
        await self._inner.aclose()


async def test_each_canceled_batch_counts_once_even_when_the_answer_to_its_cancel_is_lost(
    tmp_path: Path,
) -> None:
    write_requests(tmp_path / "in.jsonl", 300)
    emu_config = EmulatorConfig(batch_seconds=60, clock=ManualClock())
    async with (
        serve_emulator(emu_config) as emu,
        Client(
            api_key=SECRET_KEY, base_url=emu.url, transport=_AnswerLostOnce(), sleep=quick
        ) as client,
    ):
        pipeline = Pipeline(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            state=tmp_path / "job.state",
            client=client,
            config=PipelineConfig(dry_run="off", poll_interval=0.05, max_batch_requests=100),
        )
        metrics = JobMonitor(pipeline).collector()
        async with pipeline:
            await wait_for(
                _submitted(pipeline, 300, batches=3), timeout=30, what="every batch created"
            )
            stats = await pipeline.cancel()
        assert stats.canceled
        assert stats.outcomes == {"canceled": 300}
        for batch in await batch_statuses(emu.url):
            assert batch.request_counts.canceled == 100
        parsed = samples(generate_latest(_Registry(metrics)).decode())
        # three batches, each asked to cancel at least twice (the job's watcher and its
        # end both ask, and every first answer is lost): three canceled batches
        assert value(parsed, "pipeline_batches_canceled_total") == 3
