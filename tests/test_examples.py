"""Every example runs, on the embedded emulator (no API key), and does what its
header says: so that none of them can rot."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

import pipeline
from pipeline import _pipeline, _worker

if TYPE_CHECKING:
    import types

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.fixture(autouse=True)
def public_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """The examples import the public names; provide any the package does not
    export yet (a no-op once ``pipeline/__init__.py`` re-exports them)."""
    for name, value in (
        ("Pipeline", _pipeline.Pipeline),
        ("QueuePipeline", _worker.QueuePipeline),
        ("WatchPipeline", _worker.WatchPipeline),
    ):
        if not hasattr(pipeline, name):
            monkeypatch.setattr(pipeline, name, value, raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


def load(name: str) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name", ["evaluation", "moderation", "product_descriptions", "web_service", "worker_definition"]
)
def test_header_shows_one_command_to_run_it(name: str) -> None:
    header = (EXAMPLES / f"{name}.py").read_text().split('"""')[1]
    command = next(line.strip() for line in header.splitlines() if line.startswith("    python "))
    assert f"examples/{name}.py" in command


async def test_evaluation_scores_every_case(tmp_path: Path) -> None:
    evaluation = load("evaluation")
    report = await evaluation.evaluate(tmp_path, 200)
    # on the emulator 3 cases in 4 expect the fake model's own answer: see the header
    assert report == {"cases": 200, "passed": 150, "failed": 50, "errored": 0}
    scores = [
        msgspec.json.decode(line) for line in (tmp_path / "scores.jsonl").read_bytes().splitlines()
    ]
    assert sorted(s["id"] for s in scores) == sorted(f"case-{i}" for i in range(200))
    failed = {s["id"] for s in scores if s["verdict"] == "failed"}
    assert failed == {f"case-{i}" for i in range(0, 200, 4)}


async def test_moderation_joins_verdicts_to_rows(tmp_path: Path) -> None:
    import csv

    moderation = load("moderation")
    out = await moderation.moderate(tmp_path, 60)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    source = moderation.comments(60)
    assert [r["id"] for r in rows] == [s["id"] for s in source]
    assert [r["text"] for r in rows] == [s["text"] for s in source]
    assert {r["category"] for r in rows} <= set(moderation.CATEGORIES)
    assert all(r["flagged"] in {"True", "False"} for r in rows)


async def test_product_descriptions_csv_to_csv(tmp_path: Path) -> None:
    import csv

    products = load("product_descriptions")
    out = await products.generate(tmp_path, 120)
    with out.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 120
    assert rows[0]["sku"] == "P00000"
    assert all(r["description"] for r in rows)
    assert len((tmp_path / "results.jsonl").read_bytes().splitlines()) == 120


async def test_web_service_answers_every_handler(tmp_path: Path) -> None:
    from pipeline.emulator._model import reply_text

    service = load("web_service")
    got = await service.serve(tmp_path, 25)
    assert len(got) == 25
    assert got["req-7"] == " ".join(reply_text("Question 7?"))


async def test_worker_definition_builds_a_watching_pipeline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PIPELINE_WORKDIR", str(tmp_path))
    definition = load("worker_definition")
    built: Any = definition.make_pipeline()
    assert isinstance(built, _worker.WatchPipeline)
    assert built.directory == tmp_path / "inbox"
    assert built.directory.is_dir()
