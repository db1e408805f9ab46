"""Stand-ins for a ``Pipeline`` where a test needs only its life cycle (``run``,
``statistics``, ``stop``): the worker's signal handling and definition loading."""

from __future__ import annotations

import anyio

from pipeline import PipelineStatistics


class FakePipeline:
    """Runs until stopped, like a pipeline on a source that never ends."""

    def __init__(self) -> None:
        self.started = anyio.Event()
        self.stopped = anyio.Event()
        self.stop_calls = 0
        self.finished = False

    async def run(self) -> None:
        self.started.set()
        await self.stopped.wait()
        self.finished = True

    def statistics(self) -> PipelineStatistics:
        return PipelineStatistics(read=3, written=3, finished=self.finished)

    def stop(self, reason: str = "") -> None:
        self.stop_calls += 1
        self.stopped.set()


class StubbornPipeline(FakePipeline):
    """Does not end when asked to stop (a batch in hand takes long)."""

    def stop(self, reason: str = "") -> None:
        self.stop_calls += 1
