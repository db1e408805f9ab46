"""Worker definitions: a file names a pipeline or a factory of one; a bad one says
what is expected, and an error in it shows the user's code, not the worker's."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pipeline._errors import UsageError
from pipeline._worker import load_definition, resolve_pipeline
from tests._helpers import FakePipeline

if TYPE_CHECKING:
    from pathlib import Path


async def test_definitions_name_a_pipeline_or_a_factory(tmp_path: Path) -> None:
    direct = tmp_path / "direct.py"
    direct.write_text(
        "from tests._helpers import FakePipeline\n"
        "pipeline = FakePipeline()\n"
        "if __name__ == '__main__':\n"
        "    raise SystemExit('the main block must not run in a worker')\n"
    )
    factory = tmp_path / "factory.py"
    factory.write_text(
        "from tests._helpers import FakePipeline\n"
        "async def make_pipeline():\n"
        "    return FakePipeline()\n"
    )
    for path in (direct, factory):
        resolved = await resolve_pipeline(load_definition(path), path=str(path))
        assert isinstance(resolved, FakePipeline)


async def test_bad_definitions_say_what_is_expected(tmp_path: Path) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("x = 1\n")
    with pytest.raises(UsageError, match="define a module-level `pipeline = Pipeline"):
        await resolve_pipeline(load_definition(empty), path=str(empty))
    wrong = tmp_path / "wrong.py"
    wrong.write_text("pipeline = 'not one'\n")
    with pytest.raises(UsageError, match="is a str, not a Pipeline"):
        await resolve_pipeline(load_definition(wrong), path=str(wrong))
    with pytest.raises(UsageError, match="is not a file"):
        load_definition(tmp_path / "missing.py")


async def test_an_error_in_a_definition_shows_the_users_code_not_the_workers(
    tmp_path: Path,
) -> None:
    loading = tmp_path / "loading.py"
    loading.write_text("x = 1\nraise ValueError('no inbox configured')\n")
    with pytest.raises(UsageError) as raised:
        load_definition(loading)
    text = str(raised.value)
    assert text.startswith(f"the definition {loading} failed while loading it:")
    assert f'File "{loading}", line 2, in <module>' in text
    assert text.endswith("ValueError: no inbox configured")
    assert "runpy" not in text
    assert "_worker.py" not in text
    factory = tmp_path / "factory.py"
    factory.write_text("def make_pipeline():\n    return {}['inbox']\n")
    with pytest.raises(UsageError, match="failed while calling make_pipeline") as raised:
        await resolve_pipeline(load_definition(factory), path=str(factory))
    assert str(raised.value).endswith("KeyError: 'inbox'")
    assert "_worker.py" not in str(raised.value)
