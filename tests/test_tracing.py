"""OpenTelemetry spans of a 3-batch job (the SDK's in-memory exporter), and nothing
of OpenTelemetry imported when it is absent."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from typing import TYPE_CHECKING

import anyio
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

from pipeline import Client, Pipeline, PipelineConfig
from pipeline.testing import EmulatorConfig, serve_emulator
from tests._helpers import KEY, quick, write_mixed_input

if TYPE_CHECKING:
    from pathlib import Path

CONFIG = PipelineConfig(
    max_batch_requests=10,
    linger_seconds=5.0,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",
)
BATCH = "/v1/messages/batches/{message_batch_id}"


async def test_a_three_batch_job_has_a_job_span_three_batch_spans_and_http_client_spans(
    tmp_path: Path,
) -> None:
    write_mixed_input(tmp_path / "in.jsonl", 30, bad=False)
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    emu_config = EmulatorConfig(batch_seconds=0.125, fault_rate=0.1, seed=3)
    async with (
        serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu,
        Client(api_key=KEY, base_url=emu.url, sleep=quick) as client,
    ):
        pipeline = Pipeline(
            tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=CONFIG, client=client
        )
        pipeline.observer().trace(provider)
        with anyio.fail_after(30):
            stats = await pipeline.run()
        created = sorted(b.id for b in emu.state.batches())
    assert stats.finished
    assert stats.batches_submitted == 3
    spans = exporter.get_finished_spans()
    (job,) = [s for s in spans if s.name == "pipeline.job"]
    assert job.attributes["pipeline.requests.written"] == 30
    assert job.attributes["pipeline.job.finished"] is True
    assert job.status.status_code is not StatusCode.ERROR
    batches = [s for s in spans if s.name == "pipeline.batch"]
    assert sorted(b.attributes["pipeline.batch.id"] for b in batches) == created
    for batch in batches:
        assert batch.parent.span_id == job.context.span_id
        assert batch.attributes["pipeline.batch.request_count"] == 10
        assert batch.attributes["pipeline.batch.succeeded"] == 10
        assert batch.attributes["pipeline.batch.errored"] == 0
        assert [e.name for e in batch.events] == ["created", "ended", "collected"]
        assert job.start_time <= batch.start_time <= batch.end_time <= job.end_time
    # one span per HTTP request, as the semantic conventions for HTTP clients say
    calls = [s for s in spans if s.kind is SpanKind.CLIENT]
    assert len(spans) == 1 + 3 + len(calls)  # nothing per request
    by_batch = {b.attributes["pipeline.batch.id"]: b for b in batches}
    routes = set()
    for call in calls:
        a = call.attributes
        route = a["url.template"]
        routes.add((a["http.request.method"], route))
        assert call.name == f"{a['http.request.method']} {route}"
        assert a["url.full"].startswith(emu.url)
        assert a["server.address"] == "127.0.0.1"
        assert a["server.port"] == int(emu.url.rsplit(":", 1)[1])
        assert not any("key" in k.lower() or KEY in str(v) for k, v in a.items())
        status = a["http.response.status_code"]
        if status >= 400:  # an injected 429 / 500 / 529
            assert a["error.type"] == str(status)
            assert call.status.status_code is StatusCode.ERROR
        if route.startswith(BATCH):  # about one batch: a child of its span
            batch_id = a["url.full"].split("/v1/messages/batches/")[1].split("/")[0]
            assert call.parent.span_id == by_batch[batch_id].context.span_id
        else:
            assert call.parent.span_id == job.context.span_id
    assert {("POST", "/v1/messages/batches"), ("GET", BATCH), ("GET", BATCH + "/results")} <= routes
    successful_creates = [
        c
        for c in calls
        if c.attributes["url.template"] == "/v1/messages/batches"
        and c.attributes["http.response.status_code"] == 200
    ]
    assert len(successful_creates) == 3
    statuses = {c.attributes["http.response.status_code"] for c in calls}
    assert statuses - {200}, "the emulator injected no fault: raise fault_rate"


def test_without_opentelemetry_a_monitored_job_runs_and_imports_none_of_it(tmp_path: Path) -> None:
    write_mixed_input(tmp_path / "in.jsonl", 12, bad=False)
    script = textwrap.dedent(
        """
        import sys
        sys.modules["opentelemetry"] = None  # as if it were not installed
        import anyio
        from pipeline import JobMonitor, Pipeline, PipelineConfig

        async def main():
            config = PipelineConfig(max_batch_requests=5, linger_seconds=0.01,
                                    poll_interval=0.01, dry_run="off")
            pipeline = Pipeline(sys.argv[1], sys.argv[2], config=config, overwrite=True)
            monitor = JobMonitor(pipeline)
            async with monitor.serve():
                stats = await pipeline.run()
            assert stats.written == 12, stats
            assert not pipeline.observer().tracing
            loaded = [m for m in sys.modules if m.startswith("opentelemetry")]
            assert loaded == ["opentelemetry"], loaded  # only the blocking entry

        anyio.run(main)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr


def test_spans_follow_the_provider_the_service_sets_and_none_before(tmp_path: Path) -> None:
    write_mixed_input(tmp_path / "in.jsonl", 6, bad=False)
    script = textwrap.dedent(
        """
        import sys
        import anyio
        from opentelemetry import trace  # imported, as the anthropic SDK does: not configured
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        from pipeline import Pipeline, PipelineConfig

        config = PipelineConfig(linger_seconds=0.01, poll_interval=0.01, dry_run="off")

        async def job(n):
            out = f"{sys.argv[2]}.{n}"
            return await Pipeline(sys.argv[1], out, config=config).run()

        async def main():
            before = await job(1)
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(SimpleSpanProcessor(exporter))
            trace.set_tracer_provider(provider)  # the service configures it
            after = await job(2)
            jobs = [s for s in exporter.get_finished_spans() if s.name == "pipeline.job"]
            assert before.written == 6
            assert len(jobs) == 1, jobs  # the second run only
            assert jobs[0].attributes["pipeline.requests.written"] == after.written == 6

        anyio.run(main)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "in.jsonl"), str(tmp_path / "out.jsonl")],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
