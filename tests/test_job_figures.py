"""What a resumed job says about itself (issue 14, smaller things): its estimated cost
is the job's, in the statistics and the summary, as ``status`` gives it; and an input
edited anywhere, to the same size, is refused as another input."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from pipeline import LedgerError, Pipeline, PipelineConfig, read_status, render_summary

if TYPE_CHECKING:
    from pathlib import Path

FAST = PipelineConfig(
    max_batch_requests=5,
    max_in_flight=20,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",
)


def write_input(path: Path, count: int) -> None:
    lines = [
        msgspec.json.encode(
            {
                "custom_id": f"r-{i:04d}",
                "params": {
                    "model": "claude-3-haiku-20240307",
                    "max_tokens": 1000,
                    "messages": [{"role": "user", "content": f"question {i}"}],
                },
            }
        )
        for i in range(count)
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


async def run(tmp_path: Path, config: PipelineConfig = FAST) -> Pipeline:
    pipeline = Pipeline(
        tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=config, emulator_dir=tmp_path / "e"
    )
    with anyio.fail_after(60):
        await pipeline.run()
    return pipeline


async def test_a_resumed_job_reports_the_job_s_estimate_as_status_does(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 20)
    # each request: ~40 input tokens + 1,000 output at $0.625 per million; a budget of
    # a cent stops the first run after some of them
    first = await run(tmp_path, msgspec.structs.replace(FAST, budget_usd=0.005))
    stopped = first.statistics()
    assert not stopped.finished
    assert 0 < stopped.estimated_cost_usd <= 0.005
    second = await run(tmp_path)
    resumed = second.statistics()
    assert resumed.finished
    status = await read_status(tmp_path / "out.jsonl.state")
    # the whole job's figure (what status shows), not only what the second run sent
    assert resumed.estimated_cost_usd == pytest.approx(status.estimated_cost_usd)
    assert resumed.estimated_cost_usd > stopped.estimated_cost_usd
    summary = render_summary(resumed)
    assert f"${status.estimated_cost_usd:.4f}" in summary
    # a finished job run again reports the same figure, not $0.00
    again = (await run(tmp_path)).statistics()
    assert again.estimated_cost_usd == pytest.approx(status.estimated_cost_usd)
    assert f"estimated ${status.estimated_cost_usd:.4f}" in render_summary(again)


@pytest.mark.parametrize("where", ["first MiB", "past the first MiB", "last byte"])
async def test_an_input_edited_anywhere_to_the_same_size_is_refused(
    tmp_path: Path, where: str
) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source, 20)
    # more than a MiB, so an edit can fall past the first one
    padding = b" " * 1_100_000 + b"\n"
    source.write_bytes(source.read_bytes() + padding)
    budget = msgspec.structs.replace(FAST, budget_usd=0.005)
    first = (await run(tmp_path, budget)).statistics()
    assert not first.finished  # stopped early: the job has more to read
    data = bytearray(source.read_bytes())
    index = {"first MiB": 30, "past the first MiB": 1_050_000, "last byte": len(data) - 2}[where]
    data[index] = ord("x") if data[index] != ord("x") else ord("y")
    source.write_bytes(bytes(data))
    with pytest.raises(LedgerError, match="changed since the job started"):
        await run(tmp_path)
