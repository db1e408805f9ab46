"""``python -m pipeline run``: the README's main command, as a user runs it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import msgspec
import pytest

from pipeline._run_cli import build_config, format_summary
from pipeline._stats import PipelineStatistics
from pipeline.cli import build_parser

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "requests.jsonl"


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
    env["PYTHONUNBUFFERED"] = "1"
    return env


def test_run_example_on_embedded_emulator(tmp_path: Path) -> None:
    out = tmp_path / "results.jsonl"
    command = [sys.executable, "-m", "pipeline", "run", str(EXAMPLE), "--output", str(out)]
    command += ["--linger-seconds", "0.05", "--poll-interval", "0.05"]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    assert "emulator" in done.stderr  # it says where it runs
    inputs = [msgspec.json.decode(line) for line in EXAMPLE.read_bytes().splitlines()[:1]]
    assert inputs
    results = [msgspec.json.decode(line) for line in out.read_bytes().splitlines()]
    rejects = [
        msgspec.json.decode(line)
        for line in (tmp_path / "results.rejects.jsonl").read_bytes().splitlines()
    ]
    total = len(EXAMPLE.read_bytes().splitlines())
    assert len(results) + len(rejects) == total
    assert len({r["custom_id"] for r in results}) == len(results)
    assert all(r["result"]["type"] == "succeeded" for r in results)
    assert {r["error"]["type"] for r in rejects} <= {
        "invalid_json",
        "invalid_custom_id",
        "invalid_request_error",
    }
    assert all(r["line"] >= 1 for r in rejects)
    assert "rejected 3" in done.stderr
    assert str(out) in done.stderr

    again = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=60)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stderr
    assert out.read_bytes().count(b"\n") == len(results)


def test_missing_input_fails_with_one_line(tmp_path: Path) -> None:
    command = [sys.executable, "-m", "pipeline", "run", str(tmp_path / "nope.jsonl")]
    command += ["--output", str(tmp_path / "o.jsonl")]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode != 0
    assert "nope.jsonl" in done.stderr.strip().splitlines()[-1]


def test_options_map_to_config() -> None:
    args = build_parser(["run"]).parse_args(
        [
            "run",
            "in.jsonl",
            "--output",
            "o.jsonl",
            "--max-batch-requests",
            "50",
            "--max-in-flight",
            "100",
            "--linger-seconds",
            "0.5",
            "--max-attempts",
            "2",
            "--canceled",
            "retry",
            "--dry-run",
            "off",
            "--budget-usd",
            "3",
        ]
    )
    config = build_config(args)
    assert config.max_batch_requests == 50
    assert config.max_in_flight == 100
    assert config.linger_seconds == 0.5
    assert config.max_attempts == 2
    assert config.canceled == "retry"
    assert config.dry_run == "off"
    assert config.budget_usd == 3


def test_bad_option_values_exit_2(tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        str(EXAMPLE),
        "--output",
        str(tmp_path / "o.jsonl"),
        "--max-batch-requests",
        "0",
    ]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 2
    assert "max_batch_requests" in done.stderr


@pytest.mark.parametrize("finished", [True, False])
def test_summary_names_outcomes(finished: bool) -> None:
    stats = PipelineStatistics(
        read=5,
        rejected=1,
        written=4,
        outcomes={"succeeded": 3, "errored:invalid_request_error": 1},
        finished=finished,
    )
    text = format_summary(stats)
    assert "succeeded 3" in text
    assert "rejected 1" in text
    assert ("job finished" in text) == finished
