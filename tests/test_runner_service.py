"""The runner and the service it talks to: which model names the local check
accepts, whose prices the estimates use, and where the API key comes from."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline import _pipeline
from pipeline._config import PipelineConfig
from pipeline._pipeline import Pipeline
from pipeline._pricing import DEFAULT_PRICES
from pipeline.testing import EmulatorConfig, serve_emulator
from tests._helpers import FAST, MODEL, entry, read_results, run_job

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.api._types import ResultLine

#: A current model the 2024 allow-list of the local schema does not know.
NEW_MODEL = "claude-sonnet-4-20250514"
SECRET = "sk-ant-api03-runner-test-secret-0123456789"


def new_model_entry(cid: str, max_tokens: int = 16) -> dict[str, Any]:
    line = entry(cid)
    line["params"]["model"] = NEW_MODEL
    line["params"]["max_tokens"] = max_tokens
    return line


def write_lines(path: Path, lines: list[dict[str, Any]]) -> None:
    path.write_bytes(b"".join(msgspec.json.encode(x) + b"\n" for x in lines))


def rejects_of(path: Path) -> list[dict[str, Any]]:
    return [msgspec.json.decode(x) for x in path.read_bytes().splitlines()]


# -- models ------------------------------------------------------------------------


async def test_any_model_name_passes_the_local_check_by_default(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [new_model_entry("new-0"), entry("old-0")])
    # a service that knows the model (the emulator's default list is the 2024 one)
    emu_config = EmulatorConfig(batch_seconds=0.0, models=None)
    async with serve_emulator(emu_config, data_dir=tmp_path / "e") as emu:
        _, stats = await run_job(tmp_path, emu.url)
    assert stats.finished
    assert stats.rejected == 0
    assert sorted(r.custom_id for r in read_results(tmp_path / "out.jsonl")) == ["new-0", "old-0"]


async def test_configured_models_restrict_the_local_check(tmp_path: Path) -> None:
    write_lines(tmp_path / "in.jsonl", [new_model_entry("new-0"), entry("old-0")])
    config = msgspec.structs.replace(FAST, models=frozenset({MODEL}))
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        _, stats = await run_job(tmp_path, emu.url, config)
        assert set(emu.submissions()) == {"old-0"}  # refused before paying
    [reject] = rejects_of(tmp_path / "out.rejects.jsonl")
    assert (reject["line"], reject["custom_id"]) == (1, "new-0")
    assert NEW_MODEL in reject["error"]["message"]
    assert stats.written == 1


def test_models_must_name_at_least_one_model() -> None:
    with pytest.raises(ValueError, match="models must name at least one model"):
        PipelineConfig(models=frozenset())


# -- prices ------------------------------------------------------------------------


async def test_given_prices_drive_the_spend_guard(tmp_path: Path) -> None:
    lines = [new_model_entry(f"p-{i}", max_tokens=1000) for i in range(10)]
    write_lines(tmp_path / "in.jsonl", lines)
    # $15 per million output tokens: each request may cost about $0.015
    prices = DEFAULT_PRICES.with_prices({NEW_MODEL: (3.0, 15.0)})
    config = msgspec.structs.replace(FAST, budget_usd=0.05)
    emu_config = EmulatorConfig(batch_seconds=0.0, models=None)
    async with serve_emulator(emu_config, data_dir=tmp_path / "e") as emu:
        _, stats = await run_job(tmp_path, emu.url, config, prices=prices)
        submitted = sorted(emu.submissions())
    # unpriced by the default table, the model would cost $0 and all ten would go
    assert submitted == ["p-0", "p-1", "p-2"]
    assert stats.stopped_reason is not None
    assert stats.stopped_reason.startswith("budget $0.05 reached")
    assert 0.045 < stats.estimated_cost_usd <= 0.05


async def test_given_prices_replace_the_default_ones_everywhere(tmp_path: Path) -> None:
    # a model the default table knows, at ten times its price: the estimate (dry run
    # off, so the validate stage prices it) and the actual cost follow the given table
    lines = [entry(f"x-{i}") for i in range(4)]
    write_lines(tmp_path / "in.jsonl", lines)
    base = DEFAULT_PRICES.price_for(MODEL)
    assert base is not None
    tenfold = DEFAULT_PRICES.with_prices({MODEL: (base[0] * 10, base[1] * 10)})
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        _, default = await run_job(tmp_path, emu.url, FAST)
        for name in ("out.jsonl", "out.jsonl.state", "out.rejects.jsonl"):
            (tmp_path / name).unlink(missing_ok=True)
        _, priced = await run_job(tmp_path, emu.url, FAST, prices=tenfold)
    assert default.actual_cost_usd > 0
    assert priced.estimated_cost_usd == pytest.approx(default.estimated_cost_usd * 10)
    assert priced.actual_cost_usd == pytest.approx(default.actual_cost_usd * 10)


# -- the API key -------------------------------------------------------------------


async def _run_without_key_arguments(
    tmp_path: Path, config: PipelineConfig, notices: list[str]
) -> Any:
    seen: list[ResultLine] = []

    async def on_result(line: ResultLine) -> None:
        seen.append(line)

    pipeline = Pipeline(
        [entry(f"k-{i}") for i in range(3)],
        on_result,
        config=config,
        state=tmp_path / "s.db",
        emulator_dir=tmp_path / "embedded",
        announce=notices.append,
    )
    with anyio.fail_after(30):
        stats = await pipeline.run()
    assert sorted(r.custom_id for r in seen) == ["k-0", "k-1", "k-2"]
    return pipeline, stats


@pytest.mark.parametrize("variable", ["ANTHROPIC_API_KEY", "MY_TEAM_KEY"])
async def test_the_key_in_the_environment_selects_the_service(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    variable: str,
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv(variable, SECRET)
    caplog.set_level(logging.DEBUG, logger="pipeline")
    config = msgspec.structs.replace(FAST, api_key_env=variable)
    notices: list[str] = []
    # "the service" is an emulator on loopback standing in for api.anthropic.com
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        monkeypatch.setattr(_pipeline, "DEFAULT_BASE_URL", emu.url)
        pipeline, stats = await _run_without_key_arguments(tmp_path, config, notices)
        assert sorted(emu.submissions()) == ["k-0", "k-1", "k-2"]
    assert not [n for n in notices if "emulator" in n]
    assert not (tmp_path / "embedded").exists()
    # the key is nowhere: logs, notices, statistics, the pipeline, the state file
    for text in (caplog.text, *notices, repr(stats), repr(pipeline), repr(pipeline.config)):
        assert SECRET not in text
    for path in tmp_path.glob("s.db*"):
        assert SECRET.encode() not in path.read_bytes()


async def test_without_a_key_the_emulator_notice_names_the_configured_variable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("MY_TEAM_KEY", raising=False)
    config = msgspec.structs.replace(FAST, api_key_env="MY_TEAM_KEY")
    notices: list[str] = []
    await _run_without_key_arguments(tmp_path, config, notices)
    [notice] = [n for n in notices if "local emulator" in n]
    assert "set MY_TEAM_KEY to use the Message Batches API" in notice
