"""check_entry's fast path (lean Structs for text-only requests) must give exactly
what the full strict decode gives: same verdicts, reasons and signatures."""

from __future__ import annotations

import itertools
from typing import Any, get_type_hints

import msgspec
import pytest

from pipeline.api import _schema
from pipeline.api._schema import Checked, SchemaError, check_entry
from pipeline.api._types import MessageCreateParams

MODEL = "claude-3-haiku-20240307"
TOOL = {"name": "lookup", "input_schema": {"type": "object"}}


def full(raw: bytes) -> Checked | SchemaError:
    return _schema._check_entry_full(raw, _schema.DEFAULT_MODELS, _schema.MODEL_MAX_OUTPUT_TOKENS)


def entry(custom_id: object = "req-1", **params: Any) -> bytes:
    base: dict[str, Any] = {
        "model": MODEL,
        "max_tokens": 100,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    base.update(params)
    return msgspec.json.encode({"custom_id": custom_id, "params": base})


TEXT = {"type": "text", "text": "hello"}
CACHED = {"type": "ephemeral"}
CACHED_1H = {"type": "ephemeral", "ttl": "1h"}


def marked(block: dict[str, Any], cache_control: object = CACHED) -> dict[str, Any]:
    return {**block, "cache_control": cache_control}


def user(*blocks: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": list(blocks)}]


#: requests with cache_control breakpoints in the places the fast path reads
BREAKPOINTS: list[bytes] = [
    entry(system=[marked(TEXT)] * 2, messages=user(marked(TEXT), marked(TEXT))),
    entry(system=[marked(TEXT)] * 3, messages=user(marked(TEXT), marked(TEXT))),
    entry(system=[marked(TEXT)] * 3, messages=user(marked(TEXT), marked(TEXT, None))),
    entry(tools=[marked(TOOL)], system=[marked(TEXT)] * 3),
    entry(tools=[marked(TOOL)], system=[marked(TEXT)] * 4),
    entry(tools=[marked({**TOOL, "name": f"t{i}"}) for i in range(5)]),
    entry(tools=[marked(TOOL, None)], system=[marked(TEXT)] * 4),
    entry(system=[marked(TEXT, CACHED_1H), marked(TEXT)], messages=user(marked(TEXT))),
    entry(system=[marked(TEXT)], messages=user(marked(TEXT, CACHED_1H))),
    entry(tools=[marked(TOOL)], system=[marked(TEXT, CACHED_1H)]),
    entry(tools=[marked(TOOL, CACHED_1H)], messages=user(marked(TEXT))),
]
VARIANTS: list[bytes] = [
    entry(),
    entry(system="Be brief.", temperature=0.2),
    entry(system=[TEXT], top_p=0.5, top_k=3, stop_sequences=["END"], metadata={"user_id": "u"}),
    entry(service_tier="auto", stream=False),
    entry(tools=[TOOL]),
    entry(tools=[]),
    entry(tools=[TOOL, TOOL]),
    entry(tools=[{"name": "bad name", "input_schema": {"type": "object"}}]),
    entry(tools=None),
    entry(tools=[{"name": "lookup", "descripton": "x", "input_schema": {"type": "object"}}]),
    entry(tools=[{**TOOL, "type": "custom", "description": "d", "strict": True}]),
    entry(tools=[TOOL, {"type": "web_search_20250305", "name": "web_search", "max_uses": 2}]),
    entry(stream=True),
    entry(stream=True, service_tier="auto"),
    entry(max_tokens=5000),
    entry(model="claude-9"),
    entry(custom_id="a b"),
    entry(custom_id="ok\n"),
    entry(custom_id="x" * 64),
    entry(custom_id="é"),
    entry(custom_id="Az09-_"),
    entry(custom_id="a.b"),
    entry(custom_id="x" * 65),
    entry(custom_id=""),
    entry(stop_sequences=[" "]),
    entry(system=[{"type": "text", "text": " "}]),
    entry(system=[{"text": "no type"}]),
    entry(messages=[]),
    entry(messages=[{"role": "user", "content": ""}]),
    entry(messages=[{"role": "user", "content": []}]),
    entry(messages=[{"role": "user", "content": [TEXT, {"text": "no type"}]}]),
    entry(messages=[{"role": "user", "content": [{"type": "", "text": "x"}]}]),
    entry(messages=[{"role": "user", "content": [{"type": "text", "text": "  "}]}]),
    entry(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "So "}]),
    entry(messages=[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": ""}]),
    entry(messages=[{"role": "user", "content": [TEXT]}, {"role": "assistant", "content": "Ok"}]),
    entry(
        messages=[
            {"role": "user", "content": [{"type": "image", "source": {"type": "url", "url": "u"}}]}
        ]
    ),
    entry(tool_choice={"type": "auto"}),
    entry(thinking={"type": "enabled", "budget_tokens": 2048}, max_tokens=4000),
    entry(bogus=1),
    *BREAKPOINTS,
    b'{"custom_id":"a","params":{"model":"' + MODEL.encode() + b'","max_tokens":5,'
    b'"messages":[{"role":"user","content":"ab\xff"}]}}',
]


@pytest.mark.parametrize("raw", VARIANTS)
def test_fast_path_agrees_with_the_full_decode(raw: bytes) -> None:
    assert check_entry(raw) == full(raw)


def test_same_shape_same_signature_through_either_path() -> None:
    # the first call fills the caches, the second reads them
    for raw, _ in itertools.product(VARIANTS, range(2)):
        assert check_entry(raw) == full(raw)


def test_a_misspelt_tool_field_is_refused_by_both_paths() -> None:
    raw = entry(tools=[{"name": "lookup", "descripton": "x", "input_schema": {"type": "object"}}])
    for _ in range(2):  # the fast path's tools cache must keep the verdict
        result = check_entry(raw)
        assert isinstance(result, SchemaError)
        assert result.message == "params.tools[0]: unknown field `descripton`"


def test_too_many_cache_breakpoints_are_refused_by_both_paths() -> None:
    # one tool definition, the same for both lines: the second meets the tools cache
    tools = [marked(TOOL)]
    for raw in [entry(tools=tools, system=[marked(TEXT)] * 4)] * 2 + [
        entry(tools=tools, system=[marked(TEXT)] * 2, messages=user(marked(TEXT), marked(TEXT)))
    ]:
        result = check_entry(raw)
        assert isinstance(result, SchemaError)
        assert result.message.endswith(
            ".cache_control: A maximum of 4 blocks with cache_control may be provided. Found 5."
        )
        assert result == full(raw)


def test_a_1h_breakpoint_after_a_5m_one_is_refused_by_both_paths() -> None:
    raw = entry(system=[marked(TEXT)], messages=user(marked(TEXT, CACHED_1H)))
    result = check_entry(raw)
    assert isinstance(result, SchemaError)
    assert result.message.startswith(
        "params.messages[0].content[0].cache_control.ttl: a ttl='1h' cache_control block "
        "must not come after a ttl='5m' cache_control block."
    )
    assert result == full(raw)


def test_breakpoints_within_the_limits_stay_on_the_fast_path(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Prompt caching is common in batches: counting its breakpoints must not send
    every such line through the slower full decode."""

    def no_full_path(*args: object) -> None:
        raise AssertionError("took the full path")

    monkeypatch.setattr(_schema, "_check_entry_full", no_full_path)
    tool = marked({**TOOL, "name": "cached_tool"}, CACHED_1H)
    for _ in range(2):  # a miss, then a hit in the tools cache
        raw = entry(
            tools=[tool], system=[marked(TEXT, CACHED_1H)], messages=user(TEXT, marked(TEXT))
        )
        assert isinstance(check_entry(raw), Checked)


def test_bad_utf8_is_a_reject_not_a_crash() -> None:
    result = check_entry(VARIANTS[-1])
    assert isinstance(result, SchemaError)
    assert result.message.startswith("not valid JSON: invalid UTF-8")


def test_fast_fields_have_the_full_types_in_the_full_order() -> None:
    fast = get_type_hints(_schema._FastParams, include_extras=True)
    wire = get_type_hints(MessageCreateParams, include_extras=True)
    for name in set(fast) - {"messages", "tools"}:
        assert fast[name] == wire[name], name
    order = [f for f in MessageCreateParams.__struct_fields__ if f in fast]
    assert list(_schema._FastParams.__struct_fields__) == order
