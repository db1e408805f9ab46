"""The results stage against the emulator on loopback: a download cut in the middle
is re-opened and only the missing lines are written."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import msgspec

from pipeline._config import PipelineConfig
from pipeline._pipeline import Pipeline
from pipeline.api._client import Client
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

MODEL = "claude-3-haiku-20240307"


def line(cid: str) -> bytes:
    params = {"model": MODEL, "max_tokens": 16, "messages": [{"role": "user", "content": cid}]}
    return msgspec.json.encode({"custom_id": cid, "params": params})


async def test_a_cut_download_is_reopened_and_each_line_written_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ids = [f"r-{i:04d}" for i in range(600)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(line(cid) for cid in ids) + b"\n")
    config = PipelineConfig(
        max_batch_requests=150,
        max_in_flight=600,
        linger_seconds=0.01,
        poll_interval=0.01,
        max_poll_interval=0.05,
        dry_run="off",
    )
    emu_config = EmulatorConfig(batch_seconds=0.0, cut_rate=0.5, seed=4)
    caplog.set_level(logging.WARNING, logger="pipeline.results")
    async with serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=config, client=client
            )
            with anyio.fail_after(20):
                stats = await pipeline.run()
        submissions = emu.submissions()
    reopened = [r for r in caplog.records if "re-opening" in r.getMessage()]
    assert reopened  # downloads were cut (the seed makes it so) ...
    written = [
        msgspec.json.decode(x)["custom_id"]
        for x in (tmp_path / "out.jsonl").read_bytes().splitlines()
    ]
    assert len(written) == len(set(written))  # ... and nothing was written twice
    assert sorted(written) == ids  # ... nor lost
    assert submissions == dict.fromkeys(ids, 1)  # re-downloading never re-submits
    assert stats.written == 600
    assert stats.finished
