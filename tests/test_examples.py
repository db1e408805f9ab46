"""Every example runs, on the embedded emulator (no API key), does what its header
says and is safe to re-run: the command lines of each header are run as users copy
them (with a small size and a temporary workdir), twice, and the second run must
give the same output as the first. So that none of them can rot."""

from __future__ import annotations

import contextlib
import csv
import importlib.util
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

import pipeline
from pipeline.testing import reply_text

if TYPE_CHECKING:
    import types
    from collections.abc import Callable, Iterator

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
#: the examples run on the embedded emulator, whatever the environment says
ENV = {k: v for k, v in os.environ.items() if k != "ANTHROPIC_API_KEY"}
#: seconds any one command may take
COMMAND_TIMEOUT = 60


@pytest.fixture(autouse=True)
def no_api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


def load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def header_commands(name: str) -> list[str]:
    """The command lines of an example's docstring (indented by four spaces)."""
    header = (EXAMPLES / f"{name}.py").read_text().split('"""')[1]
    return [
        line.strip()
        for line in header.splitlines()
        if line.startswith(("    python ", "    cp ", "    mv "))
    ]


def script_command(name: str, workdir: Path, size_option: str, size: int) -> list[str]:
    """The header's one command, with ``workdir`` and ``size`` put in."""
    [line] = header_commands(name)
    args = shlex.split(line)
    assert args[:2] == ["python", f"examples/{name}.py"]
    args[0] = sys.executable
    args[args.index("--workdir") + 1] = str(workdir)
    args[args.index(size_option) + 1] = str(size)
    return args


def run_twice(args: list[str], workdir: Path, outputs: list[str]) -> str:
    """Run the command twice; the second run must print and write what the first
    did. The first run's stdout."""
    runs = []
    for _ in range(2):
        done = subprocess.run(
            args, cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=COMMAND_TIMEOUT
        )
        assert done.returncode == 0, done.stderr
        runs.append((done.stdout, {name: (workdir / name).read_bytes() for name in outputs}))
    assert runs[1] == runs[0]
    return runs[0][0]


def test_evaluation_command_is_repeatable(tmp_path: Path) -> None:
    workdir = tmp_path / "eval"
    args = script_command("evaluation", workdir, "--cases", 40)
    stdout = run_twice(args, workdir, ["scores.jsonl", "results.jsonl"])
    # on the emulator 3 cases in 4 expect the fake model's own answer: see the header
    assert stdout.startswith("30/40 passed (75%), 10 failed, 0 errored; per case: ")
    scores = [
        msgspec.json.decode(line) for line in (workdir / "scores.jsonl").read_bytes().splitlines()
    ]
    assert [s["id"] for s in scores] == [f"case-{i}" for i in range(40)]
    failed = {s["id"] for s in scores if s["verdict"] == "failed"}
    assert failed == {f"case-{i}" for i in range(0, 40, 4)}


async def test_evaluation_workdir_holds_one_job(tmp_path: Path) -> None:
    evaluation = load("evaluation")
    assert (await evaluation.evaluate(tmp_path, 8))["cases"] == 8
    with pytest.raises(evaluation.WorkdirInUseError, match="--fresh"):
        await evaluation.evaluate(tmp_path, 12)
    report = await evaluation.evaluate(tmp_path, 12, fresh=True)
    assert report == {"cases": 12, "passed": 9, "failed": 3, "errored": 0}
    assert len((tmp_path / "results.jsonl").read_bytes().splitlines()) == 12


def test_moderation_command_is_repeatable(tmp_path: Path) -> None:
    moderation = load("moderation")
    workdir = tmp_path / "moderation"
    args = script_command("moderation", workdir, "--rows", 30)
    stdout = run_twice(args, workdir, ["moderated.csv", "results.jsonl"])
    assert stdout == f"verdicts joined to their rows: {workdir / 'moderated.csv'}\n"
    with (workdir / "moderated.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    source = moderation.comments(30)
    assert [r["id"] for r in rows] == [s["id"] for s in source]
    assert [r["text"] for r in rows] == [s["text"] for s in source]
    assert {r["category"] for r in rows} <= set(moderation.CATEGORIES)
    assert all(r["flagged"] in {"True", "False"} for r in rows)


def test_product_descriptions_command_is_repeatable(tmp_path: Path) -> None:
    workdir = tmp_path / "products"
    args = script_command("product_descriptions", workdir, "--rows", 30)
    run_twice(args, workdir, ["products.csv", "descriptions.csv", "results.jsonl"])
    with (workdir / "descriptions.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 30
    assert rows[0]["sku"] == "P00000"
    assert all(r["description"] for r in rows)
    assert len((workdir / "results.jsonl").read_bytes().splitlines()) == 30


def test_web_service_command_is_repeatable(tmp_path: Path) -> None:
    workdir = tmp_path / "service"
    stdout = run_twice(script_command("web_service", workdir, "--requests", 25), workdir, [])
    assert f"req-4: {' '.join(reply_text('Question 4?'))}\n" in stdout
    assert stdout.endswith("... 25 requests answered through the batch pipeline, 0 failed\n")


async def test_web_service_answers_a_rejected_request_with_an_error(tmp_path: Path) -> None:
    service = load("web_service")

    def params(i: int) -> dict[str, Any]:
        params: dict[str, Any] = service.question(i)
        if i == 3:
            del params["max_tokens"]  # the pipeline rejects it: no result will come
        return params

    got = await service.serve(tmp_path, 8, timeout=6, params=params)
    assert got["req-3"].startswith("error: no answer within 6 s: the pipeline rejected")
    assert str(tmp_path / "rejects.jsonl") in got["req-3"]
    assert got["req-7"] == " ".join(reply_text("Question 7?"))
    [reject] = (tmp_path / "rejects.jsonl").read_bytes().splitlines()
    assert msgspec.json.decode(reject)["custom_id"] == "req-3"


def test_worker_commands_run_and_rerun(tmp_path: Path) -> None:
    """The header's three commands, as written, from a directory holding
    ``examples/``: the worker takes the dropped file; run again, it goes on with the
    same job and writes nothing twice."""
    (tmp_path / "examples").symlink_to(EXAMPLES)
    worker, *drop = header_commands("worker_definition")
    assert worker == "python -m pipeline worker examples/worker_definition.py"
    out = tmp_path / "examples-out" / "worker"
    env = {**ENV, "PIPELINE_POLL_SECONDS": "0.1"}
    with _started(worker, tmp_path, env) as proc:
        for line in drop:
            subprocess.run(shlex.split(line), cwd=tmp_path, check=True)
        # the worker says when the file is accounted for and its results written
        _await_log(proc, lambda log: b"took a.jsonl" in log and _written(log) == 50)
        assert (out / "inbox" / "a.jsonl.done").exists()
        assert _lines(out) == 50
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=COMMAND_TIMEOUT)
        assert proc.returncode == 0
    first = (out / "results.jsonl").read_bytes()
    assert len(first.splitlines()) == 50
    assert len((out / "results.rejects.jsonl").read_bytes().splitlines()) == 3
    with _started(worker, tmp_path, env) as proc:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=COMMAND_TIMEOUT)
        assert proc.returncode == 0
    assert (out / "results.jsonl").read_bytes() == first
    assert sorted(p.name for p in (out / "inbox").iterdir()) == ["a.jsonl.done"]


async def test_worker_definition_builds_a_watching_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_WORKDIR", str(tmp_path))
    definition = load("worker_definition")
    built: Any = definition.make_pipeline()
    assert isinstance(built, pipeline.WatchPipeline)
    assert built.directory == tmp_path / "inbox"
    assert built.directory.is_dir()


def test_examples_import_public_names_only() -> None:
    # the one exception: the emulator's answer key, which has no public name
    allowed = {"pipeline.emulator._model"}
    for path in EXAMPLES.glob("*.py"):
        for module in re.findall(r"^\s*(?:from|import) (pipeline\S*)", path.read_text(), re.M):
            private = any(part.startswith("_") for part in module.split("."))
            assert not private or module in allowed, f"{path.name} imports {module}"


# -- helpers of the worker test ------------------------------------------------------


@contextlib.contextmanager
def _started(command: str, cwd: Path, env: dict[str, str]) -> Iterator[subprocess.Popen[bytes]]:
    """Run ``command`` in ``cwd``; ready once it says it runs on the emulator."""
    proc = subprocess.Popen(
        [sys.executable, *shlex.split(command)[1:]],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _await_log(proc, lambda log: b"running on the local emulator" in log)
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()


def _lines(out: Path) -> int:
    results = out / "results.jsonl"
    return len(results.read_bytes().splitlines()) if results.exists() else 0


def _await_log(proc: subprocess.Popen[bytes], reached: Callable[[bytes], bool]) -> None:
    """Read the worker's log (stderr) line by line until ``reached(log so far)``: the
    worker itself says when it got there (bounded by the test timeout)."""
    assert proc.stderr is not None
    log = b""
    for line in proc.stderr:
        log += line
        if reached(log):
            return
    raise AssertionError(f"the worker exited ({proc.wait()}) first; its log:\n{log.decode()}")


def _written(log: bytes) -> int:
    """Result lines written, from the worker's "batch collected ... written=N" lines."""
    return sum(int(n) for n in re.findall(rb"batch collected .*written=(\d+)", log))


def _triaged(path: Path) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]


def test_composed_pipeline_runs_as_a_worker_and_again(tmp_path: Path) -> None:
    """The header's command, as written: the worker runs the composed definition to
    its end; run again, it sends nothing and writes nothing twice."""
    (tmp_path / "examples").symlink_to(EXAMPLES)
    [worker] = header_commands("composed_pipeline")
    assert worker == "python -m pipeline worker examples/composed_pipeline.py"
    env = {**ENV, "PIPELINE_TICKETS": "60"}
    out = tmp_path / "examples-out" / "composed" / "triaged.jsonl"
    for _ in range(2):
        done = subprocess.run(
            shlex.split(worker),
            cwd=tmp_path,
            env=env,
            capture_output=True,
            timeout=COMMAND_TIMEOUT,
            check=False,
        )
        assert done.returncode == 0, done.stderr
    composed = load("composed_pipeline")
    kept = [t for t in composed.tickets(60) if t["text"]]
    got = _triaged(out)
    assert sorted(t["ticket"] for t in got) == [t["id"] for t in kept]
    for t in got:
        ticket = next(k for k in kept if k["id"] == t["ticket"])
        assert t["priority"] == ("urgent" if ticket["urgent"] else "normal")
        assert t["reply"] == " ".join(reply_text(ticket["text"]))


async def test_composed_pipeline_runs_in_a_service(tmp_path: Path) -> None:
    composed = load("composed_pipeline")
    stats = await composed.make_pipeline(tmp_path).run()
    assert stats.finished
    assert stats.filtered == len([t for t in composed.tickets(200) if not t["text"]])
    assert len(_triaged(tmp_path / "triaged.jsonl")) == 200 - stats.filtered
