"""End-to-end checks before paying, through the whole pipeline and the emulator on
loopback: the sampled dry run, the spend guard, and deleting collected batches."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pipeline._config import PipelineConfig
from pipeline._pipeline import Pipeline
from pipeline._pricing import estimate_cost_usd
from pipeline.api._client import Client
from pipeline.api._schema import DEFAULT_MODELS
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

HAIKU = "claude-3-haiku-20240307"
OPUS = "claude-3-opus-20240229"
FAST = PipelineConfig(
    max_batch_requests=10,
    max_in_flight=40,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",
)


def line(cid: str, model: str = HAIKU, max_tokens: int = 16) -> bytes:
    return msgspec.json.encode(
        {
            "custom_id": cid,
            "params": {
                "model": model,
                "max_tokens": max_tokens,
                "messages": [{"role": "user", "content": f"tell me about {cid}"}],
            },
        }
    )


def output_ids(path: Path) -> list[str]:
    return [msgspec.json.decode(x)["custom_id"] for x in path.read_bytes().splitlines()]


def rejects(path: Path) -> list[dict[str, Any]]:
    return [msgspec.json.decode(x) for x in path.read_bytes().splitlines()]


async def run(tmp_path: Path, url: str, config: PipelineConfig) -> Any:
    async with Client(api_key="test-key", base_url=url) as client:
        pipeline = Pipeline(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            tmp_path / "rejects.jsonl",
            config=config,
            client=client,
        )
        with anyio.fail_after(30):
            return await pipeline.run()


async def test_a_shape_failing_its_dry_run_is_rejected_and_the_rest_is_submitted(
    tmp_path: Path,
) -> None:
    # The deployment (emulator) does not serve Opus, though it is a known model locally.
    served = DEFAULT_MODELS - {OPUS}
    lines = [line(f"h-{i}") for i in range(12)] + [line(f"o-{i}", OPUS) for i in range(6)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    config = msgspec.structs.replace(FAST, dry_run="count-tokens")
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0, models=served)) as emu:
        stats = await run(tmp_path, emu.url, config)
        submitted = emu.submissions()
    assert sorted(output_ids(tmp_path / "out.jsonl")) == sorted(f"h-{i}" for i in range(12))
    bad = rejects(tmp_path / "rejects.jsonl")
    assert sorted(r["custom_id"] for r in bad) == sorted(f"o-{i}" for i in range(6))
    assert [r["line"] for r in bad] == list(range(13, 19))
    # the sample carries the service's own message; the others point at it
    sample = next(r for r in bad if r["line"] == 13)
    assert OPUS in sample["error"]["message"]
    assert all("line 13" in r["error"]["message"] for r in bad if r is not sample)
    # one count_tokens call per shape, however many requests share it; none for the
    # Opus shape, whose model is not in the deployment's GET /v1/models
    assert stats.dry_run_calls == 1
    assert not any(cid.startswith("o-") for cid in submitted)


async def test_the_budget_stops_submission_at_the_right_request_and_collects_the_rest(
    tmp_path: Path,
) -> None:
    lines = [line(f"r-{i:02d}", max_tokens=1000) for i in range(30)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    each = [
        estimate_cost_usd(HAIKU, len(x) // 3 + 1, 1000) for x in lines
    ]  # the documented approximation
    budget = sum(each[:17]) + each[17] / 2  # room for exactly 17 requests
    config = msgspec.structs.replace(FAST, budget_usd=budget)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        stats = await run(tmp_path, emu.url, config)
        first = emu.submissions()
        assert sorted(first) == [f"r-{i:02d}" for i in range(17)]
        assert stats.stopped_reason is not None
        assert "budget" in stats.stopped_reason
        assert not stats.finished
        assert stats.estimated_cost_usd <= budget
        # everything submitted was collected
        assert sorted(output_ids(tmp_path / "out.jsonl")) == sorted(first)

        # the budget holds for the job, not per run: the same command spends no more
        stats = await run(tmp_path, emu.url, config)
        assert stats.stopped_reason is not None
        assert "budget" in stats.stopped_reason
        assert emu.submissions() == first

        # a larger budget resumes where the job stopped: nothing is paid twice
        stats = await run(tmp_path, emu.url, msgspec.structs.replace(config, budget_usd=1.0))
        assert stats.finished
        assert sorted(emu.submissions().items()) == [(f"r-{i:02d}", 1) for i in range(30)]
    assert sorted(output_ids(tmp_path / "out.jsonl")) == [f"r-{i:02d}" for i in range(30)]


async def test_delete_ended_removes_collected_batches_from_the_service(tmp_path: Path) -> None:
    lines = [line(f"d-{i}") for i in range(25)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    config = msgspec.structs.replace(FAST, delete_ended=True)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        stats = await run(tmp_path, emu.url, config)
        assert stats.batches_submitted == 3
        assert emu.app.state.batches() == []
    assert sorted(output_ids(tmp_path / "out.jsonl")) == sorted(f"d-{i}" for i in range(25))


async def test_a_budget_stop_while_the_dry_run_holds_entries_loses_none_of_them(
    tmp_path: Path,
) -> None:
    # The dry run holds the shape's entries while its sample is checked; the bad
    # line after them overtakes them. The budget then stops in the middle of the
    # held entries: the checkpoint must stay before the first one not sent.
    lines = [line(f"r-{i:02d}", max_tokens=1000) for i in range(20)] + [b"{not json"]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    config = msgspec.structs.replace(FAST, dry_run="count-tokens", max_batch_requests=5)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        unlimited = await run(tmp_path, emu.url, msgspec.structs.replace(config, budget_usd=1.0))
        each = unlimited.estimated_cost_usd / 20  # what the dry run measured, per request
    for name in ("out.jsonl", "rejects.jsonl", "out.jsonl.state"):
        (tmp_path / name).unlink()

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        stats = await run(tmp_path, emu.url, msgspec.structs.replace(config, budget_usd=each * 7.5))
        assert stats.stopped_reason is not None
        assert "budget" in stats.stopped_reason
        assert sorted(emu.submissions()) == [f"r-{i:02d}" for i in range(7)]

        stats = await run(tmp_path, emu.url, msgspec.structs.replace(config, budget_usd=1.0))
        assert stats.finished
        assert sorted(emu.submissions().items()) == [(f"r-{i:02d}", 1) for i in range(20)]
    assert sorted(output_ids(tmp_path / "out.jsonl")) == [f"r-{i:02d}" for i in range(20)]
    assert [(r["line"], r["error"]["type"]) for r in rejects(tmp_path / "rejects.jsonl")] == [
        (21, "invalid_json")
    ]
