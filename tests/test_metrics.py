"""/metrics, /healthz and /readyz of a job against the emulator with faults on:
scraped while the job runs and after, parsed with prometheus-client's own parser;
the counters are the job's statistics (what the summary prints), exactly."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import anyio
import httpx
import msgspec
import pytest

from pipeline import APIStatusError, Client, JobMonitor, Pipeline
from pipeline.testing import EmulatorConfig, serve_emulator
from tests._helpers import BAD_LINES, CONFIG, KEY, quick, samples, total, value, write_mixed_input

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from pipeline import PipelineStatistics

COUNTERS_OF_STATS = {
    "pipeline_requests_read_total": "read",
    "pipeline_requests_submitted_total": "submitted",
    "pipeline_requests_retried_total": "retried",
    "pipeline_batches_created_total": "batches_submitted",
    "pipeline_dry_run_calls_total": "dry_run_calls",
    "pipeline_estimated_cost_usd_total": "estimated_cost_usd",
    "pipeline_actual_cost_usd_total": "actual_cost_usd",
}


def check_against(parsed: dict, stats: PipelineStatistics) -> None:  # type: ignore[type-arg]
    for name, field in COUNTERS_OF_STATS.items():
        assert value(parsed, name) == getattr(stats, field), name
    assert total(parsed, "pipeline_requests_rejected_total") == stats.rejected
    assert total(parsed, "pipeline_requests_written_total") == stats.written
    for key, count in stats.outcomes.items():
        outcome, _, error_type = key.partition(":")
        got = value(
            parsed, "pipeline_requests_written_total", outcome=outcome, error_type=error_type
        )
        assert got == count, key
    for model, usage in stats.usage.items():
        for kind, field in (
            ("input", "input_tokens"),
            ("output", "output_tokens"),
            ("cache_read", "cache_read_input_tokens"),
            ("cache_write", "cache_creation_input_tokens"),
        ):
            got = value(parsed, "pipeline_tokens_total", model=model, kind=kind)
            assert got == getattr(usage, field), (model, kind)


async def test_metrics_agree_with_the_summary_during_and_after_a_job_with_faults(
    tmp_path: Path,
) -> None:
    ids = write_mixed_input(tmp_path / "in.jsonl", 120)
    emu_config = EmulatorConfig(
        batch_seconds=0.25, fault_rate=0.15, cut_rate=0.3, request_error_rate=0.1, seed=5
    )
    scrapes: list[dict] = []  # type: ignore[type-arg]
    readies: list[int] = []
    async with (
        serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu,
        Client(api_key=KEY, base_url=emu.url, sleep=quick) as client,
    ):
        pipeline = Pipeline(
            tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=CONFIG, client=client
        )
        monitor = JobMonitor(pipeline)
        async with monitor.serve() as url, httpx.AsyncClient(base_url=url) as http:
            assert (await http.get("/readyz")).status_code == 503  # not started
            with anyio.fail_after(60):
                async with pipeline, anyio.create_task_group() as tg:

                    async def scrape() -> None:
                        # while the job runs, each scrape as soon as the last is read
                        while not pipeline.statistics().finished:
                            response = await http.get("/metrics")
                            assert response.status_code == 200
                            scrapes.append(samples(response.text))
                            readies.append((await http.get("/readyz")).status_code)

                    tg.start_soon(scrape)
                    # a job that fails raises here at once (not a minute of scrapes)
                    stats = await pipeline.wait()
                    tg.cancel_scope.cancel()
            after = samples((await http.get("/metrics")).text)
            assert (await http.get("/healthz")).status_code == 200
            assert (await http.get("/readyz")).status_code == 503  # the job is over
    assert stats.finished
    assert 200 in readies  # ready while the job ran
    assert (
        sorted(
            msgspec.json.decode(x)["custom_id"]
            for x in (tmp_path / "out.jsonl").read_bytes().splitlines()
        )
        == ids
    )
    # during: counters never go down, and the job was seen with batches in flight
    assert any(value(s, "pipeline_batches_in_flight") > 0 for s in scrapes)
    assert any(value(s, "pipeline_oldest_batch_age_seconds") > 0 for s in scrapes)
    for earlier, later in zip(scrapes, [*scrapes[1:], after], strict=True):
        for (name, labels), v in earlier.items():
            if name.endswith(("_total", "_count", "_bucket")):
                assert later.get((name, labels), 0) >= v, name
    # after: the counters are the statistics, exactly
    check_against(after, stats)
    assert stats.retried > 0
    assert stats.dry_run_calls > 0
    rejects = [
        msgspec.json.decode(x) for x in (tmp_path / "out.rejects.jsonl").read_bytes().splitlines()
    ]
    by_type = Counter(r["error"]["type"] for r in rejects)
    assert by_type.keys() == BAD_LINES.keys()
    for kind, count in by_type.items():
        assert value(after, "pipeline_requests_rejected_total", type=kind) == count
    # nothing in flight; every batch ended and was collected once, cut downloads or not
    for gauge in ("pipeline_requests_in_flight", "pipeline_batches_in_flight",
                  "pipeline_spool_requests", "pipeline_deferred_requests",
                  "pipeline_oldest_batch_age_seconds"):  # fmt: skip
        assert value(after, gauge) == 0, gauge
    batches = stats.batches_submitted
    assert value(after, "pipeline_batches_ended_total") == batches
    assert value(after, "pipeline_batch_turnaround_seconds_count") == batches
    assert value(after, "pipeline_results_download_seconds_count") == batches
    # HTTP calls by status: the injected faults and every create that succeeded
    codes = {
        dict(labels)["code"] for (name, labels) in after if name == "pipeline_api_requests_total"
    }
    assert {"200", "429"} <= codes or {"200", "500"} <= codes or {"200", "529"} <= codes
    creates = value(
        after,
        "pipeline_api_requests_total",
        method="POST",
        route="/v1/messages/batches",
        code="200",
    )
    assert creates == batches


async def test_readyz_turns_503_when_the_api_refuses_the_key_and_says_why(tmp_path: Path) -> None:
    release = anyio.Event()

    async def entries() -> AsyncIterator[bytes]:
        await release.wait()  # the job waits for input: ready, and idle
        for line in []:
            yield line

    emu_config = EmulatorConfig(workspaces={KEY: "ours"})
    async with (
        serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu,
        Client(
            api_key=KEY, base_url=emu.url, extra_headers={"anthropic-workspace-id": "theirs"}
        ) as client,
    ):
        pipeline = Pipeline(entries(), tmp_path / "out.jsonl", config=CONFIG, client=client)
        monitor = JobMonitor(pipeline)
        async with monitor.serve() as url, httpx.AsyncClient(base_url=url) as http:
            async with pipeline:
                with anyio.fail_after(10):
                    while (await http.get("/readyz")).status_code != 200:
                        pass  # the ledger opens as the run starts
                with pytest.raises(APIStatusError) as refused:
                    await client.list_batches_page()  # a call of the job's client
                assert refused.value.status_code == 403
                ready = await http.get("/readyz")
                assert ready.status_code == 503
                assert "403" in ready.text
                assert (await http.get("/healthz")).status_code == 200  # up, all the same
                parsed = samples((await http.get("/metrics")).text)
                release.set()
                await pipeline.wait()
    assert (
        value(
            parsed,
            "pipeline_api_requests_total",
            method="GET",
            route="/v1/messages/batches",
            code="403",
        )
        == 1
    )
    assert KEY not in ready.text


async def test_the_monitor_app_mounted_under_a_prefix_serves_its_paths_there(
    tmp_path: Path,
) -> None:
    monitor = JobMonitor(state=tmp_path / "none.state")  # no such job yet
    transport = httpx.ASGITransport(app=monitor.asgi_app(), root_path="/ops")
    async with httpx.AsyncClient(transport=transport, base_url="http://service") as http:
        bare = await http.get("/ops")
        page = await http.get("/ops/")
        health = await http.get("/ops/healthz")
        ready = await http.get("/ops/readyz")
        script = await http.get("/ops/job.js")
    assert (bare.status_code, bare.headers["location"]) == (307, "/ops/")
    assert page.status_code == 200
    assert 'src="job.js"' in page.text  # relative: found under the prefix
    assert health.status_code == 200
    assert ready.status_code == 503
    assert "does not exist" in ready.text
    assert script.headers["content-type"].startswith("text/javascript")
