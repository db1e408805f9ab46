"""The operating options of the commands: ``run`` / ``worker --metrics-port`` and
``status --serve``, each in a real process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
from typing import TYPE_CHECKING

import anyio
import httpx

from pipeline import read_status
from tests._helpers import samples, total, value, write_mixed_input

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

URL = re.compile(rb"http://127\.0\.0\.1:\d+")
DEFINITION = """
from pipeline import PipelineConfig, WatchPipeline

pipeline = WatchPipeline(
    {inbox!r},
    {output!r},
    poll_interval=0.05,
    config=PipelineConfig(linger_seconds=0.1, poll_interval=0.05, dry_run="off"),
)
"""


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("ANTHROPIC_")}


async def wait_for(check: Callable[[], bool], what: str) -> None:
    """Wait for another process's output (a file: nothing to wait on but looking)."""
    for _ in range(1500):
        if check():
            return
        await anyio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_run_with_a_metrics_port_in_use_exits_2_and_says_so(tmp_path: Path) -> None:
    write_mixed_input(tmp_path / "in.jsonl", 5, bad=False)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = subprocess.run(
            [sys.executable, "-m", "pipeline", "run", str(tmp_path / "in.jsonl"),
             "-o", str(tmp_path / "out.jsonl"), "--metrics-port", str(port), "--progress", "off"],
            capture_output=True, text=True, timeout=60, env=environment(),
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert f"cannot serve metrics on 127.0.0.1:{port}" in done.stderr


async def test_a_worker_serves_metrics_health_and_the_page_on_its_metrics_port(
    tmp_path: Path,
) -> None:
    inbox, output, log = tmp_path / "inbox", tmp_path / "results.jsonl", tmp_path / "worker.log"
    inbox.mkdir()
    definition = tmp_path / "definition.py"
    definition.write_text(DEFINITION.format(inbox=str(inbox), output=str(output)))
    command = [sys.executable, "-m", "pipeline", "worker", str(definition), "--metrics-port",
               "0", "--progress", "off"]  # fmt: skip
    with log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=environment())
    try:
        await wait_for(lambda: URL.search(log.read_bytes()) is not None, "the metrics URL")
        match = URL.search(log.read_bytes())
        assert match is not None
        async with httpx.AsyncClient(base_url=match.group().decode()) as http:
            await wait_for(lambda: b"local emulator" in log.read_bytes(), "the worker to start")
            write_mixed_input(inbox / "drop.jsonl.tmp", 7, bad=True)
            (inbox / "drop.jsonl.tmp").rename(inbox / "drop.jsonl")
            await wait_for(
                lambda: output.exists() and len(output.read_bytes().splitlines()) == 7,
                "the results of the dropped file",
            )
            parsed = samples((await http.get("/metrics")).text)
            ready = await http.get("/readyz")
            page = await http.get("/")
            job = (await http.get("/api/job")).json()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert value(parsed, "pipeline_requests_written_total", outcome="succeeded", error_type="") == 7
    assert total(parsed, "pipeline_requests_rejected_total") == 3
    assert ready.status_code == 200, ready.text
    assert page.status_code == 200
    assert '<script src="job.js"' in page.text
    assert job["statistics"]["written"] == 7
    assert job["source"] == "worker"


async def test_status_serve_shows_a_job_with_no_worker_from_its_state_file(
    tmp_path: Path,
) -> None:
    write_mixed_input(tmp_path / "in.jsonl", 12)
    state = tmp_path / "out.jsonl.state"
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", str(tmp_path / "in.jsonl"), "-o",
         str(tmp_path / "out.jsonl"), "--progress", "off", "--quiet", "--dry-run", "off"],
        capture_output=True, text=True, timeout=60, env=environment(),
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    status = await read_status(state)
    log = tmp_path / "status.log"
    command = [sys.executable, "-m", "pipeline", "status", "--state", str(state), "--serve", "0"]
    with log.open("wb") as err:
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=err, env=environment())
    try:
        await wait_for(lambda: URL.search(log.read_bytes()) is not None, "the page's URL")
        match = URL.search(log.read_bytes())
        assert match is not None
        async with httpx.AsyncClient(base_url=match.group().decode()) as http:
            job = (await http.get("/api/job")).json()
            parsed = samples((await http.get("/metrics")).text)
            ready = await http.get("/readyz")
            healthy = await http.get("/healthz")
            page = await http.get("/")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    stats = job["statistics"]
    assert job["source"] == "state file"
    assert (stats["read"], stats["written"], stats["rejected"], stats["finished"]) == (
        status.read, status.written, status.rejected, True,
    )  # fmt: skip
    assert {kind["type"]: kind["count"] for kind in job["rejects"]} == {
        "invalid_json": 2,
        "invalid_custom_id": 1,
    }
    assert job["rejects"][0]["first"][0]["line"] == 4
    assert value(parsed, "pipeline_requests_read_total") == status.read
    assert value(parsed, "pipeline_requests_rejected_total", type="invalid_json") == 2
    assert ready.status_code == healthy.status_code == page.status_code == 200
