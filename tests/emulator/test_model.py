"""The fake model: deterministic text, truncation, stop sequences, forced tools."""

from __future__ import annotations

from typing import Any

import jsonschema
import msgspec

from pipeline.api._types import MessageCreateParams, ResultLine, SucceededResult
from pipeline.emulator._model import reply_text, respond, result_line

from .conftest import params


def answer(**kwargs: Any) -> Any:
    raw = msgspec.json.encode(params(**kwargs))
    return respond(msgspec.json.decode(raw, type=MessageCreateParams), raw)


def test_same_params_same_answer() -> None:
    first, second = answer(text="what is up"), answer(text="what is up")
    assert first == second
    assert first.id.startswith("msg_")
    assert first.content[0]["text"] == " ".join(reply_text("what is up"))
    assert answer(text="something else").content != first.content


def test_usage_is_plausible() -> None:
    short = answer(text="hi")
    long = answer(text="hi " * 400)
    assert 0 < short.usage.input_tokens < long.usage.input_tokens
    assert long.usage.input_tokens >= 300
    assert short.usage.output_tokens == len(short.content[0]["text"].split())


def test_max_tokens_truncates() -> None:
    full = answer(text="tell me")
    cut = answer(text="tell me", max_tokens=2)
    assert full.stop_reason == "end_turn"
    assert cut.stop_reason == "max_tokens"
    assert cut.usage.output_tokens == 2
    assert cut.content[0]["text"] == " ".join(full.content[0]["text"].split()[:2])


def test_stop_sequence() -> None:
    words = reply_text("tell me")
    stop = words[2]
    got = answer(text="tell me", stop_sequences=[stop])
    assert got.stop_reason == "stop_sequence"
    assert got.stop_sequence == stop
    assert stop not in got.content[0]["text"]


def test_forced_tool_use() -> None:
    tool = {
        "name": "get_weather",
        "input_schema": {
            "type": "object",
            "properties": {
                "city": {"type": "string"},
                "days": {"type": "integer"},
                "unit": {"type": "string", "enum": ["c", "f"]},
                "optional": {"type": "boolean"},
            },
            "required": ["city", "days", "unit"],
        },
    }
    for choice in ({"type": "tool", "name": "get_weather"}, {"type": "any"}):
        got = answer(tools=[tool], tool_choice=choice)
        assert got.stop_reason == "tool_use"
        (block,) = got.content
        assert block["type"] == "tool_use"
        assert block["name"] == "get_weather"
        assert block["id"].startswith("toolu_")
        # valid for the tool's schema, by an independent validator, and the same each time
        jsonschema.validate(block["input"], tool["input_schema"])
        assert set(block["input"]) >= {"city", "days", "unit"}
        assert answer(tools=[tool], tool_choice=choice).content == got.content
    assert answer(tools=[tool], tool_choice={"type": "auto"}).stop_reason == "end_turn"


def test_result_line_is_the_encoded_answer() -> None:
    # The store writes result_line's bytes; they must be exactly what encoding the
    # full answer gives, for every shape of text answer.
    cases: list[dict[str, Any]] = [
        {"text": "tell me"},
        {"text": "tell me", "max_tokens": 1},
        {"text": "tell me", "stop_sequences": [reply_text("tell me")[1], "zzz"]},
        {"text": "tell me", "stop_sequences": ["zzz"]},
        {"text": 'é 東京 "quote" \\ \n', "system": "be brief", "temperature": 0.5},
        {"text": "x", "system": [{"type": "text", "text": "sys"}]},
        {"text": "w", "tools": [{"name": "t", "input_schema": {"type": "object"}}]},
        {"text": "w", "tools": [{"name": "t"}], "tool_choice": {"type": "auto"}},
    ]
    for case in cases:
        raw = msgspec.json.encode(params(**case))
        decoded = msgspec.json.decode(raw, type=MessageCreateParams)
        expected = msgspec.json.encode(ResultLine("id-1", SucceededResult(respond(decoded, raw))))
        assert result_line("id-1", decoded, raw) == expected + b"\n", case
    forced = params(tools=[{"name": "t"}], tool_choice={"type": "any"})
    raw = msgspec.json.encode(forced)
    assert result_line("id-1", msgspec.json.decode(raw, type=MessageCreateParams), raw) is None
