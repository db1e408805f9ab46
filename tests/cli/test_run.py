"""``python -m pipeline run``: the README's main command, as a user runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import msgspec
import pytest

from pipeline._config import PipelineConfig
from pipeline._stats import PipelineStatistics
from pipeline.cli import build_parser
from pipeline.cli.run import build_config, format_summary
from pipeline.testing import start_emulator_process
from tests._helpers import entry

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "requests.jsonl"


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
    assert "WARNING pipeline: this job already finished" in again.stderr
    assert out.read_bytes().count(b"\n") == len(results)
    # the summary of the re-run gives the job's counts, not zeros
    assert f"written {len(results)}" in again.stderr
    assert "rejected 3" in again.stderr


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
            "--dry-run-rate",
            "2.5",
            "--models",
            "claude-sonnet-4-20250514, claude-3-haiku-20240307",
            "--api-key-env",
            "MY_KEY",
            "--allow-field",
            "effort",
            "--allow-field",
            "a, b",
        ]
    )
    config = build_config(args)
    assert config.allow_fields == frozenset({"effort", "a", "b"})
    assert config.max_batch_requests == 50
    assert config.max_in_flight == 100
    assert config.linger_seconds == 0.5
    assert config.max_attempts == 2
    assert config.canceled == "retry"
    assert config.dry_run == "off"
    assert config.budget_usd == 3
    assert config.dry_run_rate == 2.5
    assert config.models == frozenset({"claude-sonnet-4-20250514", "claude-3-haiku-20240307"})
    assert config.api_key_env == "MY_KEY"
    defaults = build_config(build_parser(["run"]).parse_args(["run", "i", "-o", "o"]))
    assert defaults.models is None  # any model name: the service decides
    assert defaults.dry_run_rate == PipelineConfig().dry_run_rate
    assert defaults.max_batch_requests == PipelineConfig().max_batch_requests
    # a small in-flight cap alone makes batches that small, rather than an error
    small = build_parser(["run"]).parse_args(["run", "i", "-o", "o", "--max-in-flight", "500"])
    assert (build_config(small).max_batch_requests, build_config(small).max_in_flight) == (500, 500)


def test_help_documents_the_new_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser(["run"]).parse_args(["run", "--help"])
    text = capsys.readouterr().out
    for option in ("--dry-run-rate", "--models", "--overwrite", "--api-key-env"):
        assert option in text
    assert "dry-run calls per second" in text
    assert "Exit status: 0 the job finished; 3 it ended unfinished but resumable" in text


def test_bad_option_values_exit_2(tmp_path: Path) -> None:
    done = _run_example(tmp_path, "--max-batch-requests", "0")
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


# -- exit statuses and last words ---------------------------------------------------


def _run_example(
    tmp_path: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "pipeline",
        "run",
        str(EXAMPLE),
        "-o",
        str(tmp_path / "o.jsonl"),
    ]
    command += ["--linger-seconds", "0.05", "--poll-interval", "0.05", *args]
    return subprocess.run(command, capture_output=True, text=True, env=env or _env(), timeout=60)


def _last_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert lines
    return lines[-1]


def test_todays_models_run_on_the_embedded_emulator_and_a_misspelt_one_is_rejected(
    tmp_path: Path,
) -> None:
    models = ["claude-sonnet-5-5", "claude-opus-4-1", "claude-next-9", "claud-sonnet-5-5"]
    lines = [
        msgspec.json.encode(
            {
                "custom_id": f"m{i}",
                "params": {
                    "model": m,
                    "max_tokens": 20,
                    "messages": [{"role": "user", "content": "hi"}],
                },
            }
        )
        for i, m in enumerate(models)
    ]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    command = [sys.executable, "-m", "pipeline", "run", str(tmp_path / "in.jsonl")]
    command += ["--output", str(tmp_path / "o.jsonl"), "--linger-seconds", "0.05", "-q"]
    # a model newer than this package runs once the job prices it
    command += ["--price", "claude-next-9=1,5"]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 0, done.stderr
    results = [msgspec.json.decode(x) for x in (tmp_path / "o.jsonl").read_bytes().splitlines()]
    assert sorted((r["custom_id"], r["result"]["message"]["model"]) for r in results) == [
        ("m0", "claude-sonnet-5-5"),
        ("m1", "claude-opus-4-1"),
        ("m2", "claude-next-9"),
    ]
    [reject] = [
        msgspec.json.decode(x) for x in (tmp_path / "o.rejects.jsonl").read_bytes().splitlines()
    ]
    assert (reject["line"], reject["custom_id"]) == (4, "m3")
    assert "claud-sonnet-5-5" in reject["error"]["message"]


def test_a_field_newer_than_the_package_runs_once_allowed(tmp_path: Path) -> None:
    params = {"model": "claude-opus-5-5", "max_tokens": 20}
    messages = [{"role": "user", "content": "hi"}]
    lines = [
        msgspec.json.encode(
            {"custom_id": "new", "params": {**params, "effort": "high", "messages": messages}}
        ),
        msgspec.json.encode({"custom_id": "plain", "params": {**params, "messages": messages}}),
    ]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    command = [sys.executable, "-m", "pipeline", "run", str(tmp_path / "in.jsonl"), "-q"]
    command += ["--linger-seconds", "0.05"]

    def run(output: str, *extra: str) -> tuple[list[str], list[dict[str, Any]]]:
        done = subprocess.run(
            [*command, "--output", str(tmp_path / output), *extra],
            capture_output=True,
            text=True,
            env=_env(),
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        out = (tmp_path / output).read_bytes().splitlines()
        rejects = (tmp_path / output.replace(".jsonl", ".rejects.jsonl")).read_bytes()
        ids = sorted(msgspec.json.decode(x)["custom_id"] for x in out)
        return ids, [msgspec.json.decode(x) for x in rejects.splitlines()]

    ids, [reject] = run("strict.jsonl")
    assert ids == ["plain"]
    assert "--allow-field effort" in reject["error"]["message"]
    ids, rejects = run("allowed.jsonl", "--allow-field", "effort")
    assert (ids, rejects) == (["new", "plain"], [])


def test_a_budget_stop_exits_3_with_the_reason(tmp_path: Path) -> None:
    done = _run_example(tmp_path, "--budget-usd", "0.000001", "--dry-run", "off")
    assert done.returncode == 3, done.stderr
    last = _last_line(done.stderr)
    assert last.startswith("pipeline run: not finished: budget $0.000001 reached: "), last
    assert last.endswith("re-run with a larger --budget-usd to go on")
    assert "Traceback" not in done.stderr
    # -q: still said, once as a warning when it happens and once at exit
    quiet = _run_example(tmp_path, "--budget-usd", "0.000001", "--dry-run", "off", "-q")
    assert quiet.returncode == 3
    assert "WARNING pipeline: budget $0.000001 reached" in quiet.stderr
    assert _last_line(quiet.stderr).startswith("pipeline run: not finished: budget")


def test_a_non_default_key_variable_must_be_set(tmp_path: Path) -> None:
    done = _run_example(tmp_path, "--api-key-env", "MY_UNSET_PIPELINE_KEY")
    assert done.returncode == 2
    assert _last_line(done.stderr).startswith("pipeline run: MY_UNSET_PIPELINE_KEY is not set")
    assert not (tmp_path / "o.jsonl").exists()


def test_an_output_that_is_a_directory_fails_with_one_line(tmp_path: Path) -> None:
    (tmp_path / "o.jsonl").mkdir()
    done = _run_example(tmp_path, "--state", str(tmp_path / "job.state"))
    assert done.returncode == 1, done.stderr
    assert "Traceback" not in done.stderr
    last = _last_line(done.stderr)
    assert last.startswith("pipeline run: failed: Is a directory"), last
    assert str(tmp_path / "o.jsonl") in last


def test_a_new_job_refuses_to_wipe_an_output_unless_told(tmp_path: Path) -> None:
    (tmp_path / "o.jsonl").write_text("an earlier result\n")
    done = _run_example(tmp_path)
    assert done.returncode == 2, done.stderr
    last = _last_line(done.stderr)
    assert str(tmp_path / "o.jsonl") in last
    assert "--overwrite" in last
    assert "progress" not in done.stderr  # said before anything started
    assert (tmp_path / "o.jsonl").read_text() == "an earlier result\n"
    done = _run_example(tmp_path, "--overwrite")
    assert done.returncode == 0, done.stderr
    assert "an earlier result" not in (tmp_path / "o.jsonl").read_text()


def test_with_json_logs_a_failure_is_a_json_error_record(tmp_path: Path) -> None:
    (tmp_path / "o.jsonl").mkdir()
    done = _run_example(tmp_path, "--state", str(tmp_path / "job.state"), "--log-format", "json")
    assert done.returncode == 1
    records = [msgspec.json.decode(line) for line in done.stderr.strip().splitlines()]
    assert records[-1]["level"] == "ERROR"
    assert records[-1]["message"].startswith("pipeline run: failed: ")
    assert "o.jsonl" in records[-1]["message"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (None, "the input file {p} does not exist"),
        (Path.mkdir, "the input {p} is a directory: give a JSONL file"),
        (os.mkfifo, "the input {p} is not a regular file: a pipe or device cannot be read"),
        ("-", "reading requests from standard input ('-') is not supported"),
    ],
)
def test_an_input_that_cannot_be_read_again_is_a_usage_error_said_at_once(
    tmp_path: Path, make: object, message: str
) -> None:
    source = tmp_path / "in.jsonl"
    if callable(make):
        make(source)
    name = make if isinstance(make, str) else str(source)
    command = [sys.executable, "-m", "pipeline", "run", name, "--output", str(tmp_path / "o")]
    done = subprocess.run(command, capture_output=True, text=True, env=_env(), timeout=60)
    assert done.returncode == 2
    # one line, before anything started: no progress lines, no state file
    assert len(done.stderr.splitlines()) == 1, done.stderr
    assert done.stderr.startswith("pipeline run: " + message.format(p=source))
    assert sorted(p.name for p in tmp_path.iterdir()) == (["in.jsonl"] if callable(make) else [])


def test_with_json_logs_a_budget_stop_is_a_json_warning_record(tmp_path: Path) -> None:
    done = _run_example(
        tmp_path, "--budget-usd", "0.000001", "--dry-run", "off", "--log-format", "json"
    )
    assert done.returncode == 3
    records = [msgspec.json.decode(line) for line in done.stderr.strip().splitlines()]
    assert records[-1]["level"] == "WARNING"
    assert records[-1]["message"].startswith("pipeline run: not finished: budget")


def test_a_graceful_signal_stop_exits_3_and_a_rerun_finishes(tmp_path: Path) -> None:
    from pipeline.ledger import read_status
    from pipeline.testing import start_emulator_process

    env = {**_env(), "ANTHROPIC_API_KEY": "signal-exit-test-key"}
    with start_emulator_process("--batch-seconds", "2.0") as url:
        args = ["--base-url", url, "--state", str(tmp_path / "job.state"), "--dry-run", "off"]
        command = [sys.executable, "-m", "pipeline", "run", str(EXAMPLE)]
        command += ["-o", str(tmp_path / "o.jsonl"), "--poll-interval", "0.05", *args]
        worker = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
        try:
            assert worker.stderr is not None
            # the run logs each batch it has recorded as created at the service
            for line in worker.stderr:
                if "batch created" in line:
                    break
            else:
                raise AssertionError("the run ended before any batch was created")
            status = anyio.run(read_status, tmp_path / "job.state")
            assert any(b.state == "created" for b in status.batches)
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=30)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.wait()
        assert worker.returncode == 3, err
        last = _last_line(err)
        assert (
            last == "pipeline run: not finished: signal SIGTERM; re-run the same command to resume"
        )
        done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
        assert done.returncode == 0, done.stderr


def _requests(path: Path, model: str, count: int) -> Path:
    lines = []
    for i in range(count):
        line = entry(f"q-{i}", f"question {i}")
        line["params"].update(model=model, max_tokens=50)
        lines.append(msgspec.json.encode(line))
    path.write_bytes(b"\n".join(lines) + b"\n")
    return path


def _run_on(url: str, requests: Path, out: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``pipeline run`` of ``requests`` against the emulator at ``url``."""
    command = [sys.executable, "-m", "pipeline", "run", str(requests), "-o", str(out)]
    command += ["--base-url", url, "--linger-seconds", "0.05", "--poll-interval", "0.05", *args]
    env = {**_env(), "ANTHROPIC_API_KEY": "test-key"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)


def test_a_budget_does_not_let_a_model_without_a_price_through(tmp_path: Path) -> None:
    # A model the price table lacks would count $0 against the budget: the run stops
    # before its first request, says how to price it, and a re-run with --price goes on.
    requests = _requests(tmp_path / "in.jsonl", "claude-newest", 30)
    out = tmp_path / "out.jsonl"
    with start_emulator_process("--batch-seconds", "0", "--models", "any") as url:
        done = _run_on(url, requests, out, "--budget-usd", "5")
        assert done.returncode == 3, done.stderr
        assert _last_line(done.stderr) == (
            "pipeline run: not finished: budget $5.00 cannot be enforced: no batch price "
            "for model 'claude-newest' (line 1, custom_id 'q-0'); give its prices with "
            "--price claude-newest=INPUT,OUTPUT (USD per million tokens at batch price; "
            "prices= in Python) and re-run"
        )
        assert out.read_bytes() == b""  # nothing was submitted, nothing paid
        # priced, the same command goes on and keeps to the budget
        again = _run_on(url, requests, out, "--budget-usd", "5", "--price", "claude-newest=1.5,7.5")
        assert again.returncode == 0, again.stderr
        assert sorted(
            msgspec.json.decode(x)["custom_id"] for x in out.read_bytes().splitlines()
        ) == sorted(f"q-{i}" for i in range(30))
        assert "none for claude-newest" not in again.stderr


def test_without_a_budget_the_summary_names_models_it_could_not_price(tmp_path: Path) -> None:
    requests = _requests(tmp_path / "in.jsonl", "claude-newest", 5)
    out = tmp_path / "out.jsonl"
    with start_emulator_process("--batch-seconds", "0", "--models", "any") as url:
        done = _run_on(url, requests, out)
    assert done.returncode == 0, done.stderr
    assert out.read_bytes().count(b"\n") == 5
    [row] = [x for x in done.stderr.splitlines() if x.lstrip().startswith("prices ")]
    assert row.split(None, 1)[1] == "none for claude-newest: counted as $0 (--price MODEL=IN,OUT)"


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        ("claude-x", "expected MODEL=INPUT,OUTPUT"),
        ("claude-x=1", "expected MODEL=INPUT,OUTPUT"),
        ("=1,2", "expected MODEL=INPUT,OUTPUT"),
        ("claude-x=a,b", "expected MODEL=INPUT,OUTPUT"),
        ("claude-x=-1,2", "prices must be finite and >= 0"),
        ("claude-x=1,inf", "prices must be finite and >= 0"),
    ],
)
def test_a_malformed_price_exits_2_with_the_reason(
    value: str, reason: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser(["run"]).parse_args(["run", "in.jsonl", "-o", "o.jsonl", "--price", value])
    assert exited.value.code == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith(f"pipeline run: error: argument --price: {reason}")
    assert last.endswith(f"got {value!r}")


def test_an_empty_model_list_exits_2_with_the_reason(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        build_parser(["run"]).parse_args(["run", "in.jsonl", "-o", "o.jsonl", "--models", ","])
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last == (
        "pipeline run: error: argument --models: expected model names separated by commas, got ','"
    )


def test_prices_given_on_the_command_line_extend_the_table() -> None:
    args = build_parser(["run"]).parse_args(
        ["run", "in.jsonl", "-o", "o.jsonl", "--price", "a=1,2", "--price", "b=0.5,2.5"]
    )
    assert args.price == [("a", (1.0, 2.0)), ("b", (0.5, 2.5))]


def test_an_output_that_is_the_input_is_refused_even_with_overwrite(tmp_path: Path) -> None:
    requests = tmp_path / "in.jsonl"
    requests.write_bytes(EXAMPLE.read_bytes())
    command = [sys.executable, "-m", "pipeline", "run", str(requests), "-o", str(requests)]
    done = subprocess.run(
        [*command, "--overwrite"], capture_output=True, text=True, env=_env(), timeout=60
    )
    assert done.returncode == 2
    assert _last_line(done.stderr) == (
        f"pipeline run: the output file {requests} is the input file ({requests}): "
        "give the output a file of its own"
    )
    assert requests.read_bytes() == EXAMPLE.read_bytes()  # the requests are untouched
