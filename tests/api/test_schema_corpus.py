"""A corpus of bad batch entries, each with the exact reject reason ``check_entry``
must give (field path + rule), and a mixed file whose valid entries all pass."""

from __future__ import annotations

import pytest

from pipeline.api._schema import Checked, SchemaError, check_entry

from ._corpus import CORPUS, FULL_TOOL, GOOD, TOOL, entry


def test_corpus_is_large_and_distinct() -> None:
    assert len(CORPUS) >= 30
    assert len({raw for _, raw, _ in CORPUS}) == len(CORPUS)
    assert len({m for _, _, m in CORPUS}) >= len(CORPUS) - 8


@pytest.mark.parametrize(
    ("raw", "expected"), [(r, m) for _, r, m in CORPUS], ids=[i for i, _, _ in CORPUS]
)
def test_bad_entry_gives_its_precise_reason(raw: bytes, expected: str) -> None:
    result = check_entry(raw)
    assert isinstance(result, SchemaError), result
    assert result.message == expected


def test_custom_id_is_salvaged_for_rejects() -> None:
    result = check_entry(entry(max_tokens=0))
    assert isinstance(result, SchemaError)
    assert result.custom_id == "req-1"
    assert check_entry(b"{broken").custom_id is None  # type: ignore[union-attr]


def test_mixed_file_valid_entries_all_pass() -> None:
    lines = []
    for index, raw in enumerate(GOOD):
        lines.append(raw)
        lines.append(CORPUS[index][1])
    results = [check_entry(raw) for raw in lines]
    good = results[0::2]
    bad = results[1::2]
    assert all(isinstance(r, Checked) for r in good), [
        r for r in good if not isinstance(r, Checked)
    ]
    assert all(isinstance(r, SchemaError) for r in bad)


def test_models_are_configurable() -> None:
    raw = entry(model="my-fine-tune")
    assert isinstance(check_entry(raw), SchemaError)
    assert isinstance(check_entry(raw, models=frozenset({"my-fine-tune"})), Checked)
    assert isinstance(check_entry(raw, models=None), Checked)


def test_custom_tool_fields_are_the_sdk_tool_params() -> None:
    """The fields a custom tool may have are exactly the keys of the SDK's ToolParam
    (and BetaToolParam): a new SDK field shows up here first."""
    from anthropic.types import ToolParam
    from anthropic.types.beta import BetaToolParam

    from pipeline.api import _schema_full

    assert set(FULL_TOOL) == _schema_full._CUSTOM_TOOL_FIELDS
    assert set(ToolParam.__annotations__) == _schema_full._CUSTOM_TOOL_FIELDS
    assert set(BetaToolParam.__annotations__) == _schema_full._CUSTOM_TOOL_FIELDS


def test_server_tools_keep_their_own_fields() -> None:
    server = {"type": "web_search_20250305", "name": "web_search", "allowed_domains": ["a.b"]}
    assert isinstance(check_entry(entry(tools=[TOOL, server])), Checked)
