"""Prometheus metrics of a job, with ``prometheus-client`` (the ``metrics`` extra).

``JobCollector`` is a custom collector: each scrape reads the job's statistics
(``JobMonitor.statistics()``, i.e. ``Pipeline.statistics()`` for a running job), so
the counters are the summary's own numbers, never a second count that could drift.
Only what the statistics do not hold is kept here: the two histograms, fed by the
job's observer, and the observer's counts of HTTP calls and batches ended.
The names and labels are in the README's "Operating workers" table.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from collections.abc import Iterator

    from prometheus_client.metrics_core import Metric

    from ._observe import JobObserver
    from ._stats import PipelineStatistics

__all__ = ("DOWNLOAD_BUCKETS", "TURNAROUND_BUCKETS", "JobCollector", "job_registry")

_ERRORED = "errored:"

#: seconds from a batch's create to its end: the service promises 24 h, most take
#: minutes; the emulator's take a second
TURNAROUND_BUCKETS = (
    1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0,
    7200.0, 14400.0, 28800.0, 43200.0, 86400.0,
)  # fmt: skip
#: seconds to download one batch's results (up to 100,000 lines, a few hundred MB)
DOWNLOAD_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)


class JobMonitor(Protocol):
    """What the collector reads of a ``pipeline._monitor.JobMonitor`` (named here so
    that this module, which the monitor imports late, does not import it back)."""

    observer: JobObserver | None

    def statistics(self) -> PipelineStatistics: ...

    def rejects_by_type(self) -> dict[str, int]: ...

    def oldest_batch_age(self) -> float: ...


class JobCollector(Collector):
    """The job's metrics, read at scrape time (register it in any registry)."""

    def __init__(self, monitor: JobMonitor) -> None:
        self._monitor = monitor
        self._turnaround = Histogram(
            "pipeline_batch_turnaround_seconds",
            "Seconds from a batch's create to the end of its processing (service times)",
            buckets=TURNAROUND_BUCKETS,
            registry=None,
        )
        self._download = Histogram(
            "pipeline_results_download_seconds",
            "Seconds to download a batch's results, read to their end",
            buckets=DOWNLOAD_BUCKETS,
            registry=None,
        )
        observer = monitor.observer
        if observer is not None:
            observer.on_turnaround.append(self._turnaround.observe)
            observer.on_download.append(self._download.observe)

    def collect(self) -> Iterator[Metric]:
        yield from self._requests()
        yield from self._batches()
        yield from self._money()
        yield from self._turnaround.collect()
        yield from self._download.collect()

    def _requests(self) -> Iterator[Metric]:
        stats = self._monitor.statistics()
        yield _counter("pipeline_requests_read", "Input lines read from the source", stats.read)
        rejected = CounterMetricFamily(
            "pipeline_requests_rejected",
            "Inputs that went to rejects, by error type",
            labels=["type"],
        )
        for kind, count in self._monitor.rejects_by_type().items():
            rejected.add_metric([kind], count)
        yield rejected
        yield _counter(
            "pipeline_requests_submitted",
            "Requests in batches created at the service (a retry counts again)",
            stats.submitted,
        )
        written = CounterMetricFamily(
            "pipeline_requests_written",
            "Final result lines written, by outcome (and error type for errored); "
            "earlier_run: written by an earlier run of a resumed job",
            labels=["outcome", "error_type"],
        )
        for outcome, error_type, count in _outcomes(stats.outcomes, stats.written):
            written.add_metric([outcome, error_type], count)
        yield written
        yield _counter(
            "pipeline_requests_retried",
            "Requests spooled to be sent again (retryable error, expired, no result)",
            stats.retried,
        )
        yield _gauge(
            "pipeline_requests_in_flight",
            "Requests at the service whose results are not collected yet",
            stats.in_flight,
        )
        yield _gauge("pipeline_spool_requests", "Requests waiting to be sent again", stats.retrying)
        yield _gauge(
            "pipeline_deferred_requests",
            "Requests whose custom_id the ledger settles later, with others",
            stats.deferred,
        )

    def _batches(self) -> Iterator[Metric]:
        stats = self._monitor.statistics()
        observer = self._monitor.observer
        yield _counter(
            "pipeline_batches_created", "Batches created at the service", stats.batches_submitted
        )
        yield _counter(
            "pipeline_batches_ended",
            "Batches seen ended at the service",
            observer.batches_ended if observer is not None else 0,
        )
        yield _counter(
            "pipeline_batches_canceled",
            "Batches whose cancel the service accepted (pipeline cancel, a budget cancel)",
            observer.batches_canceled if observer is not None else 0,
        )
        yield _gauge(
            "pipeline_batches_in_flight",
            "Batches created and not collected yet",
            stats.batches_in_flight,
        )
        yield _gauge(
            "pipeline_oldest_batch_age_seconds",
            "Seconds since the oldest batch in flight was created",
            self._monitor.oldest_batch_age(),
        )
        yield _counter(
            "pipeline_dry_run_calls", "Messages API calls of the dry run", stats.dry_run_calls
        )
        calls = CounterMetricFamily(
            "pipeline_api_requests",
            "HTTP requests to the API (each try), by method, route and status code "
            '(code "error": no answer)',
            labels=["method", "route", "code"],
        )
        if observer is not None:
            for (method, route, code), count in sorted(observer.calls.items()):
                calls.add_metric([method, route, code], count)
        yield calls

    def _money(self) -> Iterator[Metric]:
        stats = self._monitor.statistics()
        yield _counter(
            "pipeline_estimated_cost_usd",
            "Estimated cost in USD of the requests claimed (batch prices)",
            stats.estimated_cost_usd,
        )
        yield _counter(
            "pipeline_actual_cost_usd",
            "Cost in USD of the results, from their token usage (batch prices)",
            stats.actual_cost_usd,
        )
        tokens = CounterMetricFamily(
            "pipeline_tokens",
            "Tokens of the results, by model and kind (input, output, cache_read, cache_write)",
            labels=["model", "kind"],
        )
        for model, usage in sorted(stats.usage.items()):
            tokens.add_metric([model, "input"], usage.input_tokens)
            tokens.add_metric([model, "output"], usage.output_tokens)
            tokens.add_metric([model, "cache_read"], usage.cache_read_input_tokens)
            tokens.add_metric([model, "cache_write"], usage.cache_creation_input_tokens)
        yield tokens


def _counter(name: str, documentation: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, documentation, value=value)


def _gauge(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, documentation, value=value)


def _outcomes(outcomes: dict[str, int], written: int) -> list[tuple[str, str, int]]:
    """(outcome, error type, count) rows; what earlier runs wrote (the state file
    keeps no count per outcome) is ``earlier_run``, so the rows add up to ``written``."""
    rows: list[tuple[str, str, int]] = []
    for key, count in sorted(outcomes.items()):
        if key.startswith(_ERRORED) or key == "errored":
            rows.append(("errored", key[len(_ERRORED) :] or "unknown", count))
        else:
            rows.append((key, "", count))
    earlier = written - sum(outcomes.values())
    if earlier > 0:
        rows.append(("earlier_run", "", earlier))
    return rows


def job_registry(monitor: JobMonitor) -> CollectorRegistry:
    """A registry holding only the job's collector (what ``/metrics`` serves)."""
    registry = CollectorRegistry(auto_describe=True)
    registry.register(JobCollector(monitor))
    return registry
