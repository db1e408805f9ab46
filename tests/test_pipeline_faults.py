"""The pipeline under faults the emulator injects (429 with retry-after, 500, 529)
and the API key's secrecy when a job fails."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from pipeline._config import PipelineConfig
from pipeline._errors import StageError
from pipeline._pipeline import Pipeline
from pipeline.api._client import Client
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.api._types import ResultLine

MODEL = "claude-3-haiku-20240307"
SECRET = "sk-ant-api03-very-secret-key-0123456789"
CONFIG = PipelineConfig(
    max_batch_requests=10,
    max_in_flight=60,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",
)


async def quick(seconds: float) -> None:
    await anyio.sleep(min(seconds, 0.001))


def write_input(path: Path, n: int) -> list[str]:
    ids = [f"f-{i:03d}" for i in range(n)]
    params = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    path.write_bytes(
        b"\n".join(msgspec.json.encode({"custom_id": c, "params": params}) for c in ids) + b"\n"
    )
    return ids


async def test_injected_429_500_529_are_ridden_out_and_each_request_paid_once(
    tmp_path: Path,
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 60)
    emu_config = EmulatorConfig(batch_seconds=0.0, fault_rate=0.25, seed=11)
    async with serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu:
        # the client's backoff in fast virtual steps (its schedule is the client's tests')
        async with Client(api_key=SECRET, base_url=emu.url, sleep=quick) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=CONFIG, client=client
            )
            with anyio.fail_after(30):
                stats = await pipeline.run()
        submissions = emu.submissions()
    written = [
        msgspec.json.decode(x)["custom_id"]
        for x in (tmp_path / "out.jsonl").read_bytes().splitlines()
    ]
    assert sorted(written) == ids
    # a 429/5xx answer to a create means "not created": re-sending it is safe, and
    # nothing was created twice
    assert submissions == dict.fromkeys(ids, 1)
    assert stats.finished


async def test_the_api_key_is_in_no_log_error_or_file(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_input(tmp_path / "in.jsonl", 15)
    caplog.set_level(logging.DEBUG)

    async def broken(line: ResultLine) -> None:
        raise RuntimeError("the sink is broken")

    emu_config = EmulatorConfig(batch_seconds=0.0, fault_rate=0.2, seed=5)
    async with serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu:
        pipeline = Pipeline(
            tmp_path / "in.jsonl",
            broken,
            config=CONFIG,
            base_url=emu.url,
            api_key=SECRET,
            state=tmp_path / "job.state",
        )
        with anyio.fail_after(30), pytest.raises(StageError) as info:
            await pipeline.run()
    error = info.value
    texts = [str(error), repr(error), str(error.__cause__), repr(pipeline), caplog.text]
    texts += [str(pipeline.statistics())]
    assert not [t for t in texts if SECRET in t]
    for path in tmp_path.iterdir():
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path
