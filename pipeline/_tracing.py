"""OpenTelemetry spans of a job: one per run of the job, one per batch, one per HTTP
call to the API; never one per request (a job holds millions).

- ``pipeline.job``: the run, child of whatever span is current where it started (a
  service's own); at its end the run's counts and costs as attributes, and the
  error if it failed.
- ``pipeline.batch``: from its create (or, on a resumed job, its first poll) to its
  collection (results downloaded to their end), child of the job; attributes
  ``pipeline.batch.id``, ``pipeline.batch.request_count`` and, once it ended, its
  outcome counts (``pipeline.batch.succeeded`` ... ``expired``); events
  ``created``, ``ended``, ``collected``.
- one span per HTTP request (each try of a retried call), following OpenTelemetry's
  semantic conventions for HTTP clients: kind CLIENT, named ``{method}
  {url.template}``, with ``http.request.method``, ``url.full``, ``url.template``,
  ``server.address``, ``server.port``, ``http.response.status_code``,
  ``network.protocol.version`` and ``error.type``; a child of its batch's span when
  it is about a batch, else of the job's. Headers are never recorded (the API key
  is one).

This module is imported only when tracing is on (``_observe.tracing_enabled``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import SpanKind, Status, StatusCode

if TYPE_CHECKING:
    import httpx

    from ._batch_track import BatchTrack
    from ._stats import PipelineStatistics

__all__ = ("JobTracer",)

_DEFAULT_PORTS = {"http": 80, "https": 443}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("pipeline")
    except PackageNotFoundError:  # pragma: no cover (run from a source tree)
        return "0"


class JobTracer:
    """Makes the spans of one job (see the module docstring)."""

    def __init__(self, tracer_provider: Any = None) -> None:
        self._tracer = trace.get_tracer("pipeline", _version(), tracer_provider=tracer_provider)
        self._job: trace.Span | None = None
        self._job_context: otel_context.Context | None = None

    def job_started(self, name: str) -> None:
        self._job = self._tracer.start_span("pipeline.job", attributes={"pipeline.job": name})
        self._job_context = trace.set_span_in_context(self._job)

    def job_ended(self, stats: PipelineStatistics, error: BaseException | None) -> None:
        span = self._job
        if span is None:
            return
        span.set_attributes(
            {
                "pipeline.requests.read": stats.read,
                "pipeline.requests.rejected": stats.rejected,
                "pipeline.requests.submitted": stats.submitted,
                "pipeline.requests.written": stats.written,
                "pipeline.batches.created": stats.batches_submitted,
                "pipeline.cost.estimated_usd": stats.estimated_cost_usd,
                "pipeline.cost.actual_usd": stats.actual_cost_usd,
                "pipeline.job.finished": stats.finished,
            }
        )
        if stats.stopped_reason:
            span.set_attribute("pipeline.job.stopped_reason", stats.stopped_reason)
        if error is not None:
            span.record_exception(error)
            span.set_status(Status(StatusCode.ERROR, type(error).__name__))
        span.end()
        self._job = self._job_context = None

    # -- batches ----------------------------------------------------------------

    def batch_started(self, track: BatchTrack) -> None:
        track.span = span = self._tracer.start_span(
            "pipeline.batch",
            context=self._job_context,
            attributes={
                "pipeline.batch.id": track.batch_id,
                "pipeline.batch.request_count": track.request_count,
                "pipeline.batch.resumed": track.resumed,
            },
        )
        span.add_event("created" if not track.resumed else "resumed")

    def batch_ended(self, track: BatchTrack) -> None:
        span = track.span
        if span is None:
            return
        counts = {f"pipeline.batch.{k}": v for k, v in track.counts.items() if k != "processing"}
        span.set_attributes(counts)
        span.add_event("ended", attributes=counts)

    def batch_collected(self, track: BatchTrack) -> None:
        if track.span is not None:
            track.span.add_event("collected")
            track.span.end()
            track.span = None

    def batch_left(self, track: BatchTrack) -> None:
        """The run ended before the batch was collected (the next run collects it)."""
        if track.span is not None:
            track.span.set_attribute("pipeline.batch.collected", False)
            track.span.end()
            track.span = None

    # -- HTTP calls ---------------------------------------------------------------

    def call_started(
        self, request: httpx.Request, route: str, track: BatchTrack | None
    ) -> trace.Span:
        url = request.url
        parent = self._job_context
        if track is not None and track.span is not None:
            parent = trace.set_span_in_context(track.span)
        return self._tracer.start_span(
            f"{request.method} {route}",
            context=parent,
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": request.method,
                "url.full": str(url.copy_with(username=None, password=None)),
                "url.template": route,
                "server.address": url.host,
                "server.port": url.port or _DEFAULT_PORTS.get(url.scheme, 0),
            },
        )

    def call_failed(self, span: trace.Span, error: BaseException) -> None:
        """No answer came: the error's class is the ``error.type``."""
        cls = type(error)
        span.set_attribute("error.type", f"{cls.__module__}.{cls.__qualname__}")
        span.set_status(Status(StatusCode.ERROR, cls.__name__))
        span.end()

    def download_ended(self, span: trace.Span, received: int, complete: bool) -> None:
        span.set_attribute("http.response.body.size", received)
        if not complete:
            span.set_attribute("error.type", "incomplete_body")
            span.set_status(Status(StatusCode.ERROR, f"body cut after {received} bytes"))
        span.end()

    def call_answered(self, span: trace.Span, response: httpx.Response) -> None:
        """The answer's head is in (the span ends with ``span.end()`` or, for a
        streamed body, ``download_ended``)."""
        status = response.status_code
        span.set_attribute("http.response.status_code", status)
        version = response.http_version.partition("/")[2]
        if version:
            span.set_attribute("network.protocol.version", version)
        if status >= 400:
            span.set_attribute("error.type", str(status))
            span.set_status(Status(StatusCode.ERROR))
