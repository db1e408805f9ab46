"""What a running job's observers see: its API calls, its batches' lives, its start
and end. One ``JobObserver`` per pipeline feeds the metrics (``_metrics``), the
traces (``_tracing``), the health checks and the job page (``_monitor``).

It hooks the job in two places only: the client (``Client.add_observer``: every
HTTP request, see ``pipeline.api._observed``) and the run (``Pipeline`` enters
``job()`` around its run and calls ``attach(client)`` once its ledger and client
are open). A batch's life is read from the API's own answers: a create's answer
starts it, a retrieve that says ``ended`` ends it (the service's ``created_at`` and
``ended_at`` give its turnaround), a results download read to its end collects it.
Nothing here touches the stages, and none of it runs when nobody observes.

Tracing switches itself on when the service configured OpenTelemetry (imported it
and set a tracer provider); otherwise nothing of OpenTelemetry is imported.
"""

from __future__ import annotations

import contextlib
import re
import sys
import time
from datetime import datetime
from typing import TYPE_CHECKING, Any

import msgspec

from ._batch_track import BatchTrack as BatchTrack

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

    import httpx

    from ._stats import PipelineStatistics
    from .api._client import Client

__all__ = ("BatchTrack", "JobObserver", "tracing_enabled")

#: the API's paths (whatever prefix a gateway puts before them) and their templates
_PATH = re.compile(
    r"/v1/messages(?P<kind>/count_tokens|/batches(?:/(?P<id>[^/]+)(?P<tail>/results|/cancel)?)?)?$"
)
_BATCH_ROUTE = "/v1/messages/batches/{message_batch_id}"
_AUTH_STATUSES = frozenset({401, 403})


class _Counts(msgspec.Struct):
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0


class _BatchView(msgspec.Struct):
    """The few fields of a ``MessageBatch`` answer an observer reads (lenient)."""

    id: str
    type: str = ""
    processing_status: str = ""
    request_counts: _Counts = msgspec.field(default_factory=_Counts)
    created_at: datetime | None = None
    ended_at: datetime | None = None
    cancel_initiated_at: datetime | None = None


_BATCH_VIEW = msgspec.json.Decoder(_BatchView)


def tracing_enabled() -> bool:
    """Whether the service configured OpenTelemetry: it is imported and a tracer
    provider was set (not the API's default stand-in). Never imports it."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:
        return False
    provider = trace.get_tracer_provider()
    return not isinstance(provider, trace.ProxyTracerProvider | trace.NoOpTracerProvider)


class JobObserver:
    """Everything the job's observers read, kept up to date from the API's answers.

    **Parameters:**

    * ``clock``: POSIX time (batch ages, turnaround of a batch with no ``ended_at``).
    * ``tracer_provider``: an OpenTelemetry ``TracerProvider`` for this job's spans;
      by default the global one, if the service set one when a run starts (else no
      tracing).
    """

    def __init__(
        self, *, clock: Callable[[], float] = time.time, tracer_provider: Any = None
    ) -> None:
        self.clock = clock
        #: (method, route, status code or "error") -> HTTP requests
        self.calls: dict[tuple[str, str, str], int] = {}
        #: batches created (or resumed) and not collected yet, by batch id
        self.batches: dict[str, BatchTrack] = {}
        self.batches_ended = 0
        #: ids of the batches the service accepted a cancel of: ``POST .../cancel``
        #: answered 200, or a view of the batch says a cancel was initiated (the
        #: answer to a cancel whose caller was itself canceled is never read)
        self._canceled: set[str] = set()
        self.batches_collected = 0
        #: the last API call was refused as unauthenticated / forbidden: what it was
        self.auth_error: str | None = None
        #: the job's ledger and client are open (a run is under way)
        self.ledger_open = False
        #: callbacks, for the histograms: seconds from create to end, of a download
        self.on_turnaround: list[Callable[[float], None]] = []
        self.on_download: list[Callable[[float], None]] = []
        self._client: Client | None = None
        self._tracer: Any = None
        if tracer_provider is not None:
            self.trace(tracer_provider)

    def trace(self, tracer_provider: Any = None) -> None:
        """Make OpenTelemetry spans of the job with ``tracer_provider`` (default: the
        global one), even if OpenTelemetry was not imported when the run started.
        Needs ``opentelemetry-api`` (the ``otel`` extra); call it before the run."""
        from ._tracing import JobTracer

        self._tracer = JobTracer(tracer_provider)

    @property
    def batches_canceled(self) -> int:
        """Batches the service accepted a cancel of, each counted once."""
        return len(self._canceled)

    @property
    def tracing(self) -> bool:
        """Whether this observer makes OpenTelemetry spans."""
        return self._tracer is not None

    # -- the run's hooks ---------------------------------------------------------

    @contextlib.contextmanager
    def job(self, name: str, statistics: Callable[[], PipelineStatistics]) -> Iterator[None]:
        """Around one run of the job: its span, and the end of whatever is left."""
        if self._tracer is None and tracing_enabled():
            self.trace()
        if self._tracer is not None:
            self._tracer.job_started(name)
        error: BaseException | None = None
        try:
            yield
        except BaseException as exc:
            error = exc
            raise
        finally:
            self.ledger_open = False
            if self._client is not None:
                self._client.remove_observer(self)
                self._client = None
            if self._tracer is not None:
                for track in self.batches.values():
                    self._tracer.batch_left(track)
                self._tracer.job_ended(statistics(), error)

    def attach(self, client: Client) -> None:
        """The ledger and the client are open: watch the client's calls."""
        self._client = client
        client.add_observer(self)
        self.ledger_open = True

    # -- the client's hook (ApiObserver) ----------------------------------------

    def api_call(self, request: httpx.Request) -> _Call | None:
        """A request to the API is going out (``Client.add_observer``)."""
        match = _PATH.search(request.url.path)
        if match is None:
            return None
        batch_id, tail = match["id"], match["tail"]
        if batch_id is not None:
            route = _BATCH_ROUTE + (tail or "")
        else:
            route = "/v1/messages" + (match["kind"] or "")
        span = None
        if self._tracer is not None:
            track = self.batches.get(batch_id) if batch_id else None
            span = self._tracer.call_started(request, route, track)
        return _Call(self, request.method, route, batch_id, tail, span)

    # -- what the calls say ------------------------------------------------------

    def _answered(self, call: _Call, response: httpx.Response) -> None:
        status = response.status_code
        self._count(call, str(status))
        if status in _AUTH_STATUSES:
            self.auth_error = f"{status} to {call.method} {call.route}"
            return
        self.auth_error = None
        if response.is_success and call.tail == "/cancel" and call.batch_id is not None:
            self._canceled.add(call.batch_id)
        if not response.is_success or call.tail is not None:
            return
        if call.route.startswith("/v1/messages/batches") and call.method in ("GET", "POST"):
            try:
                self._batch_seen(_BATCH_VIEW.decode(response.content), call.batch_id is None)
            except (msgspec.DecodeError, UnicodeDecodeError):
                return  # not a batch (a list page): the client says what is wrong

    def _count(self, call: _Call, code: str) -> None:
        key = (call.method, call.route, code)
        self.calls[key] = self.calls.get(key, 0) + 1

    def _batch_seen(self, view: _BatchView, created: bool) -> None:
        if view.type != "message_batch":
            return
        if view.cancel_initiated_at is not None:
            self._canceled.add(view.id)
        counts = msgspec.structs.asdict(view.request_counts)
        track = self.batches.get(view.id)
        if track is None:
            created_at = view.created_at.timestamp() if view.created_at else self.clock()
            track = BatchTrack(
                batch_id=view.id,
                request_count=sum(counts.values()),
                created_at=created_at,
                resumed=not created,
            )
            self.batches[view.id] = track
            if self._tracer is not None:
                self._tracer.batch_started(track)
        track.counts = counts
        if track.status != "ended":
            track.status = view.processing_status
            if view.processing_status == "ended":
                self._batch_ended(track, view)

    def _batch_ended(self, track: BatchTrack, view: _BatchView) -> None:
        track.ended_at = view.ended_at.timestamp() if view.ended_at else self.clock()
        self.batches_ended += 1
        turnaround = max(0.0, track.ended_at - track.created_at)
        for observe in self.on_turnaround:
            observe(turnaround)
        if self._tracer is not None:
            self._tracer.batch_ended(track)

    def _downloaded(self, call: _Call, seconds: float, complete: bool) -> None:
        if not complete or call.batch_id is None:
            return  # a broken download is opened again: the batch is not collected yet
        for observe in self.on_download:
            observe(seconds)
        track = self.batches.pop(call.batch_id, None)
        if track is not None:
            self.batches_collected += 1
            if self._tracer is not None:
                self._tracer.batch_collected(track)

    def oldest_batch_age(self) -> float:
        """Seconds since the oldest batch in flight was created (0 when none)."""
        if not self.batches:
            return 0.0
        oldest = min(track.created_at for track in self.batches.values())
        return max(0.0, self.clock() - oldest)


class _Call:
    """One HTTP request as ``JobObserver`` follows it (an ``ApiCall``)."""

    __slots__ = ("batch_id", "method", "ok", "observer", "route", "span", "started", "tail")

    def __init__(
        self,
        observer: JobObserver,
        method: str,
        route: str,
        batch_id: str | None,
        tail: str | None,
        span: Any,
    ) -> None:
        self.observer = observer
        self.method = method
        self.route = route
        self.batch_id = batch_id
        self.tail = tail
        self.span = span
        self.started = time.monotonic()
        #: the answer was a success (a refused download's error body is not results)
        self.ok = False

    def response(self, response: httpx.Response) -> None:
        observer = self.observer
        self.ok = response.is_success
        observer._answered(self, response)
        if self.span is not None:
            observer._tracer.call_answered(self.span, response)
            if self.tail != "/results" or not response.is_success:
                self.span.end()  # a download's span ends with its body
                self.span = None

    def failed(self, error: BaseException) -> None:
        self.observer._count(self, "error")
        if self.span is not None:
            self.observer._tracer.call_failed(self.span, error)
            self.span = None

    def body_done(self, received: int, complete: bool) -> None:
        if self.tail != "/results" or not self.ok:
            return
        self.observer._downloaded(self, time.monotonic() - self.started, complete)
        if self.span is not None:
            self.observer._tracer.download_ended(self.span, received, complete)
            self.span = None
