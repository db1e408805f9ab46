"""Operating a job: Prometheus metrics, health checks and a live job page, on one
HTTP port.

``JobMonitor(pipeline)`` watches a job a worker runs in this process;
``JobMonitor(state=PATH)`` a job from its state file alone (``pipeline status
--serve``: no worker needed). Either way it gives:

- ``asgi_app()``: an ASGI app with ``/metrics`` (Prometheus text, the ``metrics``
  extra), ``/healthz``, ``/readyz``, ``/`` (the job page: one HTML page, its script
  and style shipped in the package) and ``/api/job`` (what the page shows, as JSON);
- ``collector()``: the metrics as a ``prometheus_client`` collector, for a service
  that serves its own ``/metrics``;
- ``serve(host=, port=)``: the app under uvicorn, on 127.0.0.1 by default.

What a live job cannot tell from ``Pipeline.statistics()`` (rejects by type, the
state file's batches) is read from the state file, read-only, by ``refresh()``:
``serve()`` refreshes once a second, and ``/metrics`` and ``/api/job`` refresh
before they answer.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from ._asgi_server import AsgiServer, bind
from ._errors import LedgerError, UsageError
from ._stats import PipelineStatistics
from .ledger._sqlite_report import RejectType, read_rejects
from .ledger._sqlite_schema import read_status

if TYPE_CHECKING:
    import os
    import socket
    from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping

    from prometheus_client import CollectorRegistry
    from prometheus_client.registry import Collector

    from ._observe import JobObserver
    from ._pipeline import Pipeline
    from .ledger._base import JobStatus

    Scope = MutableMapping[str, Any]
    Message = MutableMapping[str, Any]
    Receive = Callable[[], Awaitable[Message]]
    Send = Callable[[Message], Awaitable[None]]

__all__ = (
    "DEFAULT_MONITOR_HOST",
    "BatchInFlight",
    "JobMonitor",
    "JobSnapshot",
    "RatePoint",
    "serve_job",
)

logger = logging.getLogger("pipeline")

DEFAULT_MONITOR_HOST = "127.0.0.1"
#: how often ``serve()`` reads the state file and samples the rate chart
REFRESH_SECONDS = 1.0
#: the rate chart's span, and the most points the page gets
HISTORY_SECONDS = 3600.0
_HISTORY_POINTS = 240
#: the ETA's rate is measured over this many recent seconds
_ETA_WINDOW = 120.0


class BatchInFlight(msgspec.Struct, frozen=True):
    """A batch at the service, not collected yet, as the page lists it."""

    batch_id: str | None
    status: str
    request_count: int
    age_seconds: float
    #: the service's counts (live job) or {} (read from a state file)
    counts: dict[str, int] = {}


class RatePoint(msgspec.Struct, frozen=True, array_like=True):
    """A sample for the rate chart: POSIX time, requests written and submitted."""

    t: float
    written: int
    submitted: int


class JobSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """What the job page shows (``/api/job``)."""

    #: the job's input (or output, or state) path
    name: str
    #: "worker": a pipeline running in this process; "state file": read from it
    source: str
    time: float
    ready: bool
    ready_reason: str
    statistics: PipelineStatistics
    #: requests per second written, over the last two minutes
    rate_per_second: float
    eta_seconds: float | None
    rejects: list[RejectType]
    batches: list[BatchInFlight]
    history: list[RatePoint]


class JobMonitor:
    """Metrics, health and the live job page of one job (see the module docstring).

    **Parameters:**

    * ``pipeline``: the job, running (or about to run) in this process; make the
      monitor before the run starts, so that it sees the job's API calls.
    * ``state``: the job's state file (default: the pipeline's); alone, the monitor
      reads everything from it.
    * ``clock``: POSIX time (ages, the rate chart).
    """

    def __init__(
        self,
        pipeline: Pipeline | None = None,
        *,
        state: str | os.PathLike[str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if pipeline is None and state is None:
            raise UsageError("JobMonitor needs a pipeline or a state file")
        self._pipeline = pipeline
        if state is None and pipeline is not None:
            state = pipeline.state_path
        self._state = Path(state) if state is not None else None
        self.observer: JobObserver | None = pipeline.observer() if pipeline is not None else None
        self._clock = clock
        self._status: JobStatus | None = None
        self._status_error: str | None = None
        self._rejects: list[RejectType] = []
        self._rejects_total = -1
        self._history: deque[RatePoint] = deque()
        self._collector: Collector | None = None
        self._registry: CollectorRegistry | None = None
        self._refreshed = self._sampled = -math.inf
        if self.observer is not None:
            # the histograms observe from the start, not from the first scrape
            with contextlib.suppress(ImportError):  # no metrics extra: the page only
                self.collector()

    def __repr__(self) -> str:
        return f"JobMonitor(name={self.name!r}, source={self.source!r})"

    @property
    def name(self) -> str:
        p = self._pipeline
        path = p.output_path if p is not None else None
        return str(path or self._state or "")

    @property
    def source(self) -> str:
        return "worker" if self._pipeline is not None else "state file"

    # -- what is read --------------------------------------------------------------

    def statistics(self) -> PipelineStatistics:
        """The running job's statistics; for a state file, as of the last refresh."""
        if self._pipeline is not None:
            return self._pipeline.statistics()
        return _from_status(self._status)

    def rejects_by_type(self) -> dict[str, int]:
        """Rejects per error type, from the state file as of the last ``refresh()``.
        A job whose ledger is not a state file counts them all as ``unknown``."""
        if self._state is None:
            rejected = self.statistics().rejected
            return {"unknown": rejected} if rejected else {}
        return {kind.type: kind.count for kind in self._rejects}

    def oldest_batch_age(self) -> float:
        """Seconds since the oldest batch in flight was created (0 when none)."""
        if self.observer is not None:
            return self.observer.oldest_batch_age()
        return max((b.age_seconds for b in self._ledger_batches()), default=0.0)

    def ready(self) -> tuple[bool, str]:
        """Whether the job can do its work now, and why not: its ledger is open and
        the last API call was not refused as unauthenticated or forbidden."""
        observer = self.observer
        if observer is None:
            if self._status is None:
                return False, f"the state file cannot be read: {self._status_error}"
            return True, "the state file is readable"
        if not observer.ledger_open:
            return False, "the job is not running (its ledger is not open)"
        if observer.auth_error is not None:
            return False, f"the API refused the last call: {observer.auth_error}"
        return True, "the ledger is open and the API takes the key"

    async def refresh(self) -> None:
        """Read what the statistics do not hold from the state file, and sample the
        rate chart (at most once a second). Of a running job, the rejects are read
        again only when their count changed; without a pipeline, the state file is
        read at most twice a second. A state file that cannot be read yet is skipped."""
        now = time.monotonic()
        if self._pipeline is None:
            if now - self._refreshed >= 0.5:
                self._refreshed = now
                await self._read_state()
        elif self._state is not None and self.statistics().rejected != self._rejects_total:
            await self._read_state()
        if now - self._sampled >= 1.0:
            self._sampled = now
            self._sample()

    async def _read_state(self) -> None:
        assert self._state is not None
        try:
            if self._pipeline is None:
                self._status = await read_status(self._state)
                self._status_error = None
            total, kinds = await read_rejects(self._state)
        except LedgerError as exc:
            self._status_error = str(exc)
            return
        self._rejects_total, self._rejects = total, kinds

    def _sample(self) -> None:
        stats = self.statistics()
        now = self._clock()
        history = self._history
        history.append(RatePoint(now, stats.written, stats.submitted))
        while history and history[0].t < now - HISTORY_SECONDS:
            history.popleft()

    async def snapshot(self) -> JobSnapshot:
        """What the job page shows, refreshed."""
        await self.refresh()
        stats = self.statistics()
        rate = self._rate()
        eta = None
        if stats.total is not None and rate > 0:
            eta = max(0, stats.total - stats.written) / rate
        ok, reason = self.ready()
        return JobSnapshot(
            name=self.name,
            source=self.source,
            time=self._clock(),
            ready=ok,
            ready_reason=reason,
            statistics=stats,
            rate_per_second=rate,
            eta_seconds=eta,
            rejects=self._rejects,
            batches=self._batches(),
            history=_thin(list(self._history), _HISTORY_POINTS),
        )

    def _rate(self) -> float:
        history = self._history
        if len(history) < 2:
            return 0.0
        last = history[-1]
        first = next((p for p in history if p.t >= last.t - _ETA_WINDOW), history[0])
        if last.t <= first.t:
            return 0.0
        return max(0.0, (last.written - first.written) / (last.t - first.t))

    def _batches(self) -> list[BatchInFlight]:
        if self.observer is None:
            return self._ledger_batches()
        now = self._clock()
        return [
            BatchInFlight(
                batch_id=t.batch_id,
                status=t.status,
                request_count=t.request_count,
                age_seconds=max(0.0, now - t.created_at),
                counts=dict(t.counts),
            )
            for t in sorted(self.observer.batches.values(), key=lambda t: t.created_at)
        ]

    def _ledger_batches(self) -> list[BatchInFlight]:
        if self._status is None:
            return []
        now = self._clock()
        return [
            BatchInFlight(
                batch_id=b.batch_id,
                status=b.state,
                request_count=b.request_count,
                age_seconds=max(0.0, now - b.sent_at) if b.sent_at else 0.0,
            )
            for b in self._status.batches
        ]

    # -- what is served ------------------------------------------------------------

    def collector(self) -> Collector:
        """The job's metrics as a ``prometheus_client`` collector (one per monitor):
        ``prometheus_client.REGISTRY.register(monitor.collector())`` in a service
        that serves its own ``/metrics`` (then ``await monitor.refresh()`` now and
        then, or run ``serve()``, for the rejects by type). Needs the ``metrics`` extra."""
        if self._collector is None:
            from ._metrics import JobCollector

            self._collector = JobCollector(self)
        return self._collector

    def registry(self) -> CollectorRegistry:
        """A ``prometheus_client`` registry holding only ``collector()``."""
        if self._registry is None:
            from prometheus_client import CollectorRegistry

            self._registry = CollectorRegistry()
            self._registry.register(self.collector())
        return self._registry

    def asgi_app(self) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
        """The ASGI app of ``/metrics``, ``/healthz``, ``/readyz``, ``/`` and
        ``/api/job``, to mount in a service that already serves HTTP."""
        from ._monitor_app import monitor_app

        return monitor_app(self)

    @contextlib.asynccontextmanager
    async def serve(self, *, host: str = DEFAULT_MONITOR_HOST, port: int = 0) -> AsyncIterator[str]:
        """Serve ``asgi_app()`` on ``host:port`` (0: a free port) while the block
        runs, refreshing once a second; yields the base URL."""
        with contextlib.closing(_bind(host, port)) as sock:
            server = AsgiServer(self.asgi_app(), sock, name="monitor's server")
            async with server.running(), anyio.create_task_group() as tg:
                tg.start_soon(self._refresh_forever)
                try:
                    yield server.url
                finally:
                    tg.cancel_scope.cancel()

    async def _refresh_forever(self) -> None:
        while True:
            await self.refresh()
            await anyio.sleep(REFRESH_SECONDS)


def _bind(host: str, port: int) -> socket.socket:
    try:
        return bind(host, port)
    except OSError as exc:
        raise UsageError(f"cannot serve metrics on {host}:{port}: {exc.strerror}") from exc


def _from_status(status: JobStatus | None) -> PipelineStatistics:
    """A state file's counts as statistics (no outcome or usage: it keeps none)."""
    if status is None:
        return PipelineStatistics()
    in_flight = [b for b in status.batches if b.state in ("created", "ended")]
    return PipelineStatistics(
        read=status.read,
        rejected=status.rejected,
        submitted=status.submitted,
        in_flight=sum(b.request_count - b.results_written for b in in_flight),
        ended=status.ended,
        written=status.written,
        retrying=status.spooled,
        batches_in_flight=len(in_flight),
        estimated_cost_usd=status.estimated_cost_usd,
        total=status.read - status.rejected if status.finished else None,
        finished=status.finished,
        usage={},
    )


def _thin(points: list[RatePoint], most: int) -> list[RatePoint]:
    """At most ``most`` points, evenly picked, the last one kept."""
    if len(points) <= most:
        return points
    step = len(points) / most
    picked = [points[int(i * step)] for i in range(most - 1)]
    picked.append(points[-1])
    return picked


@contextlib.asynccontextmanager
async def serve_job(
    pipeline: Pipeline,
    *,
    host: str = DEFAULT_MONITOR_HOST,
    port: int,
    announce: Callable[[str], None] | None = None,
) -> AsyncIterator[JobMonitor]:
    """Serve a pipeline's metrics, health checks and job page while the block runs
    (what ``--metrics-port`` does); ``announce`` is told the page's URL."""
    monitor = JobMonitor(pipeline)
    async with monitor.serve(host=host, port=port) as url:
        (announce or logger.info)(
            f"pipeline: metrics at {url}/metrics, the job page at {url}/ "
            f"(health: /healthz, /readyz)"
        )
        yield monitor
