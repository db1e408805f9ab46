"""The emulator over a real loopback server: streaming, cuts, faults, the CLI."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

import httpx
import pytest

from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator, start_emulator_process

from .conftest import KEY, batch_body, lines

if TYPE_CHECKING:
    from pathlib import Path


def client(url: str) -> httpx.AsyncClient:
    return httpx.AsyncClient(
        base_url=url, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}, timeout=30
    )


async def test_streamed_results_in_chunks(tmp_path: Path) -> None:
    config = EmulatorConfig(batch_seconds=0.0, max_batch_requests=3000)
    async with serve_emulator(config, data_dir=tmp_path) as emu, client(emu.url) as http:
        body = batch_body(3000)
        created = await http.post("/v1/messages/batches", json=body)
        batch = (await http.get(f"/v1/messages/batches/{created.json()['id']}")).json()
        assert batch["results_url"].startswith(emu.url + "/")
        async with http.stream("GET", batch["results_url"]) as response:
            assert response.headers["content-type"] == "application/x-jsonl"
            chunks = [chunk async for chunk in response.aiter_raw()]
        data = b"".join(chunks)
        assert len(data) > 1 << 20  # more than one server chunk
        results = lines(data)
        assert Counter(r["custom_id"] for r in results) == {f"r{i}": 1 for i in range(3000)}
        assert emu.state.stats.results_generated == 3000
        assert emu.submissions()["r0"] == 1


async def test_cut_download_breaks_the_stream(tmp_path: Path) -> None:
    config = EmulatorConfig(batch_seconds=0.0, cut_rate=1.0)
    async with serve_emulator(config, data_dir=tmp_path) as emu, client(emu.url) as http:
        created = (await http.post("/v1/messages/batches", json=batch_body(50))).json()
        url = f"/v1/messages/batches/{created['id']}/results"
        received: list[bytes] = []
        headers: dict[str, str] = {}

        async def download() -> None:
            async with http.stream("GET", url) as response:
                headers.update(response.headers)
                async for chunk in response.aiter_raw():
                    received.append(chunk)  # noqa: PERF401 (keep chunks read before the cut)

        with pytest.raises(httpx.RemoteProtocolError):
            await download()
        assert 0 < len(b"".join(received)) < int(headers["content-length"])
        # The batch itself is intact.
        batch = (await http.get(f"/v1/messages/batches/{created['id']}")).json()
        assert batch["request_counts"]["succeeded"] == 50


async def test_faults_never_create(tmp_path: Path) -> None:
    config = EmulatorConfig(batch_seconds=0.0, fault_rate=0.5, seed=1)
    async with serve_emulator(config, data_dir=tmp_path) as emu, client(emu.url) as http:
        statuses: Counter[int] = Counter()
        ok = 0
        for i in range(40):
            response = await http.post("/v1/messages/batches", json=batch_body(1, prefix=f"b{i}-"))
            statuses[response.status_code] += 1
            if response.status_code == 200:
                ok += 1
            else:
                body = response.json()
                assert body["type"] == "error"
                expected = {429: "rate_limit_error", 500: "api_error", 529: "overloaded_error"}
                assert body["error"]["type"] == expected[response.status_code]
                if response.status_code == 429:
                    assert "retry-after" in response.headers
                    assert "retry-after-ms" in response.headers
        assert set(statuses) == {200, 429, 500, 529}
        assert emu.state.stats.batches == ok
        assert sum(emu.submissions().values()) == ok


async def test_slow_answers(tmp_path: Path) -> None:
    config = EmulatorConfig(slow_rate=1.0, slow_seconds=0.5)
    async with serve_emulator(config, data_dir=tmp_path) as emu, client(emu.url) as http:
        with pytest.raises(httpx.ReadTimeout):  # the connect may be slow under load: not it
            await http.get("/v1/messages/batches", timeout=httpx.Timeout(30, read=0.1))
        assert (await http.get("/v1/messages/batches")).status_code == 200


async def test_manual_clock_handle(tmp_path: Path) -> None:
    config = EmulatorConfig(batch_seconds=60.0, clock=ManualClock())
    async with serve_emulator(config, data_dir=tmp_path) as emu, client(emu.url) as http:
        created = (await http.post("/v1/messages/batches", json=batch_body(2))).json()
        emu.advance(60)
        batch = (await http.get(f"/v1/messages/batches/{created['id']}")).json()
        assert batch["processing_status"] == "ended"


async def test_cli_process(tmp_path: Path) -> None:
    args = ("--data-dir", str(tmp_path), "--manual-clock", "--batch-seconds", "10")
    with start_emulator_process(*args) as url:
        assert url.startswith("http://127.0.0.1:")
        async with client(url) as http:
            created = (await http.post("/v1/messages/batches", json=batch_body(2))).json()
            await http.post("/_emulator/advance", params={"seconds": 10})
            batch = (await http.get(f"/v1/messages/batches/{created['id']}")).json()
            assert batch["processing_status"] == "ended"
            stats = (await http.get("/_emulator/stats")).json()
            assert stats["requests_created"] == 2


def test_cli_help_documents_flags(capsys: pytest.CaptureFixture[str]) -> None:
    from pipeline.cli import main

    with pytest.raises(SystemExit):
        main(["emulator", "--help"])
    out = capsys.readouterr().out
    for flag in (
        "--max-batch-requests",
        "--max-batch-bytes",
        "--batch-seconds",
        "--expiry-seconds",
        "--retention-seconds",
        "--request-error-rate",
        "--fault-rate",
        "--slow-rate",
        "--cut-rate",
        "--seed",
        "--workspace",
        "--manual-clock",
        "--models",
    ):
        assert flag in out


def test_cli_sigterm_right_after_ready_cleans_up(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {**os.environ, "TMPDIR": str(tmp_path)}
    command = [sys.executable, "-m", "pipeline", "emulator", "--port", "0"]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().startswith("emulator listening on http://127.0.0.1:")
        assert any(tmp_path.iterdir())  # the temp data dir exists while serving
        proc.terminate()
        assert proc.wait(timeout=30) == 0
        assert proc.stdout.read() == ""  # exactly one line on stdout
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    assert list(tmp_path.iterdir()) == []  # the temp data dir is removed at exit
