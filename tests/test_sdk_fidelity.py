"""The official ``anthropic`` SDK, unmodified, against the emulator over loopback:
streaming, thinking, the models endpoint, the service's errors (issue 16).

Each test holds on the newest SDK and on the oldest the test extra allows.
"""

from __future__ import annotations

import json
import typing
from typing import TYPE_CHECKING, Any

import anthropic
import pytest
from anthropic.types import Model, ThinkingConfigParam

from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from pipeline.testing import EmulatorHandle

MODEL = "claude-3-haiku-20240307"
KEY = "sk-ant-fidelity-key"
ASK = [{"role": "user", "content": "Tell me about the weather in the mountains"}]
WEATHER = {
    "name": "weather",
    "description": "The weather in a city",
    "input_schema": {
        "type": "object",
        "properties": {
            "city": {"type": "string"},
            "days": {"type": "integer"},
            "units": {"enum": ["metric", "imperial"]},
            "hourly": {"type": "boolean"},
            "where": {
                "type": "object",
                "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
                "required": ["lat", "lon"],
            },
        },
        "required": ["city", "days", "units", "hourly", "where"],
    },
}


@pytest.fixture
async def emu() -> AsyncIterator[EmulatorHandle]:
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as handle:
        yield handle


@pytest.fixture
async def sdk(emu: EmulatorHandle) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key=KEY, base_url=emu.url, max_retries=0) as client:
        yield client


def sdk_models() -> list[str]:
    """The model names the installed SDK's ``Model`` literal lists."""
    literal = next(a for a in typing.get_args(Model) if typing.get_origin(a) is typing.Literal)
    return list(typing.get_args(literal))


def thinking_types() -> list[str]:
    """The ``type`` of every member of the installed SDK's ``ThinkingConfigParam``."""
    types = []
    for member in typing.get_args(ThinkingConfigParam):
        hint = typing.get_type_hints(member)["type"]
        while typing.get_origin(hint) is not typing.Literal:
            hint = typing.get_args(hint)[0]  # Required[Literal[...]]
        types += typing.get_args(hint)
    return types


def dump(message: Any) -> dict[str, Any]:
    """A message as plain data, the fields of ``Message`` only (a streamed one is a
    ``ParsedMessage``, whose text blocks may carry a ``parsed_output``)."""
    data: dict[str, Any] = message.model_dump(exclude_none=True)
    for block in data["content"]:
        block.pop("parsed_output", None)
    return data


async def streamed(sdk: anthropic.AsyncAnthropic, **params: Any) -> Any:
    async with sdk.messages.stream(**params) as stream:
        return await stream.get_final_message()


async def raw_events(sdk: anthropic.AsyncAnthropic, **params: Any) -> list[Any]:
    stream = await sdk.messages.create(stream=True, **params)
    return [event async for event in stream]


async def stream_text(sdk: anthropic.AsyncAnthropic, received: list[str], **params: Any) -> None:
    """``messages.stream()``'s text, into ``received`` as it comes (the stream may break)."""
    async with sdk.messages.stream(**params) as stream:
        async for text in stream.text_stream:
            received.append(text)  # noqa: PERF401 (kept piece by piece, before an error)


def assembled(events: list[Any]) -> list[dict[str, Any]]:
    """The content blocks the events of ``create(stream=True)`` add up to, put together
    here by hand (independently of the SDK's accumulator)."""
    blocks: list[dict[str, Any]] = []
    partial: dict[int, str] = {}
    for event in events:
        if event.type == "content_block_start":
            blocks.append(event.content_block.model_dump(exclude_none=True))
        elif event.type == "content_block_delta":
            block, delta = blocks[event.index], event.delta
            if delta.type == "text_delta":
                block["text"] += delta.text
            elif delta.type == "thinking_delta":
                block["thinking"] += delta.thinking
            elif delta.type == "signature_delta":
                block["signature"] = delta.signature
            elif delta.type == "input_json_delta":
                partial[event.index] = partial.get(event.index, "") + delta.partial_json
        elif event.type == "content_block_stop" and event.index in partial:
            blocks[event.index]["input"] = json.loads(partial[event.index])
    return blocks


SCHEMA_FORMAT = {
    "type": "json_schema",
    "schema": {
        "type": "object",
        "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
        "required": ["city", "days"],
        "additionalProperties": False,
    },
}


@pytest.mark.parametrize(
    "extra",
    [
        pytest.param({}, id="text"),
        pytest.param({"max_tokens": 3}, id="max_tokens"),
        pytest.param({"stop_sequences": ["e"]}, id="stop_sequence"),
        pytest.param(
            {"tools": [WEATHER], "tool_choice": {"type": "tool", "name": "weather"}},
            id="tool_use",
        ),
        pytest.param(
            {"max_tokens": 4096, "thinking": {"type": "enabled", "budget_tokens": 2048}},
            id="thinking",
        ),
        pytest.param({"thinking": {"type": "adaptive"}}, id="adaptive"),
        pytest.param({"output_config": {"format": SCHEMA_FORMAT}}, id="structured"),
        pytest.param(
            {
                "max_tokens": 4096,
                "output_config": {"format": SCHEMA_FORMAT},
                "thinking": {"type": "enabled", "budget_tokens": 1024},
            },
            id="structured_thinking",
        ),
    ],
)
async def test_a_streamed_message_assembles_to_the_plain_one(
    sdk: anthropic.AsyncAnthropic, extra: dict[str, Any]
) -> None:
    params = {"model": MODEL, "max_tokens": 200, "messages": ASK, **extra}
    plain = await sdk.messages.create(**params)
    assert dump(await streamed(sdk, **params)) == dump(plain)
    events = await raw_events(sdk, **params)
    kinds = [e.type for e in events]
    assert kinds[0] == "message_start"
    assert kinds[-2:] == ["message_delta", "message_stop"]
    assert events[0].message.content == []
    assert events[0].message.usage.input_tokens == plain.usage.input_tokens
    assert events[-2].delta.stop_reason == plain.stop_reason
    assert events[-2].usage.output_tokens == plain.usage.output_tokens
    starts = [e.content_block.type for e in events if e.type == "content_block_start"]
    assert starts == [b.type for b in plain.content]
    assert kinds.count("content_block_stop") == len(plain.content)
    assert assembled(events) == dump(plain)["content"]
    deltas = {e.delta.type for e in events if e.type == "content_block_delta"}
    expected = {"text": {"text_delta"}, "tool_use": {"input_json_delta"}}
    expected["thinking"] = {"thinking_delta", "signature_delta"}
    assert deltas == set().union(*(expected[b.type] for b in plain.content))
    if "output_config" in extra:  # the streamed text is the same JSON, valid for its schema
        answer = json.loads(plain.content[-1].text)
        assert set(answer) == {"city", "days"}
        assert isinstance(answer["city"], str)
        assert isinstance(answer["days"], int)


async def test_a_stream_broken_off_by_an_error_event_raises_in_the_sdk() -> None:
    async with (
        serve_emulator(EmulatorConfig(stream_error_rate=1.0)) as emu,
        anthropic.AsyncAnthropic(api_key=KEY, base_url=emu.url, max_retries=0) as sdk,
    ):
        plain = await sdk.messages.create(model=MODEL, max_tokens=200, messages=ASK)
        received: list[str] = []
        with pytest.raises(anthropic.APIStatusError) as caught:
            await stream_text(sdk, received, model=MODEL, max_tokens=200, messages=ASK)
    assert caught.value.body["error"]["type"] == "overloaded_error"
    assert "".join(received) == plain.content[0].text  # the first block came whole


async def test_the_stream_helpers_see_text_and_tool_input_as_they_arrive(
    sdk: anthropic.AsyncAnthropic,
) -> None:
    async with sdk.messages.stream(model=MODEL, max_tokens=200, messages=ASK) as stream:
        text = "".join([t async for t in stream.text_stream])
    plain = await sdk.messages.create(model=MODEL, max_tokens=200, messages=ASK)
    assert text == plain.content[0].text
    assert text  # there were words to stream
    forced = {"tools": [WEATHER], "tool_choice": {"type": "any"}}
    async with sdk.messages.stream(model=MODEL, max_tokens=200, messages=ASK, **forced) as stream:
        final = await stream.get_final_message()
    assert final.content[0].type == "tool_use"
    assert set(final.content[0].input) == set(WEATHER["input_schema"]["required"])


async def test_thinking_opens_the_answer_and_counts_within_the_budget(
    sdk: anthropic.AsyncAnthropic,
) -> None:
    budget = {"type": "enabled", "budget_tokens": 1024}
    message = await sdk.messages.create(model=MODEL, max_tokens=2000, messages=ASK, thinking=budget)
    thinking, text = message.content
    assert thinking.type == "thinking"
    assert thinking.thinking
    assert thinking.signature
    assert text.type == "text"
    thought = len(thinking.thinking.split())
    assert 1 <= thought <= 1024
    assert message.usage.output_tokens == thought + len(text.text.split())
    # The same request without thinking answers the same text, with fewer tokens.
    plain = await sdk.messages.create(model=MODEL, max_tokens=2000, messages=ASK)
    assert plain.content[0].text == text.text
    assert plain.usage.output_tokens == message.usage.output_tokens - thought
    # The signed block goes back in a later turn, as users send it.
    follow = [*ASK, {"role": "assistant", "content": [thinking.model_dump(), text.model_dump()]}]
    follow.append({"role": "user", "content": "and tomorrow?"})
    later = await sdk.messages.create(
        model=MODEL, max_tokens=2000, messages=follow, thinking=budget
    )
    assert later.content[0].type == "thinking"


async def test_omitted_thinking_is_signed_and_counted_but_empty(
    sdk: anthropic.AsyncAnthropic,
) -> None:
    shown = await sdk.messages.create(
        model=MODEL, max_tokens=2000, messages=ASK, thinking={"type": "adaptive"}
    )
    omitted = await sdk.messages.create(
        model=MODEL,
        max_tokens=2000,
        messages=ASK,
        thinking={"type": "adaptive", "display": "omitted"},
    )
    assert omitted.content[0].type == "thinking"
    assert omitted.content[0].thinking == ""
    assert omitted.content[0].signature
    assert omitted.usage.output_tokens == shown.usage.output_tokens


async def test_adaptive_thinking_stays_within_max_tokens(sdk: anthropic.AsyncAnthropic) -> None:
    for max_tokens in (1, 2, 5, 400):
        message = await sdk.messages.create(
            model=MODEL, max_tokens=max_tokens, messages=ASK, thinking={"type": "adaptive"}
        )
        assert message.content[0].type == "thinking"
        assert message.usage.output_tokens <= max_tokens
        if message.stop_reason == "end_turn":
            assert message.content[-1].type == "text"


@pytest.mark.parametrize("kind", thinking_types())
async def test_every_thinking_type_of_the_sdk_is_accepted(
    sdk: anthropic.AsyncAnthropic, kind: str
) -> None:
    thinking: dict[str, Any] = {"type": kind}
    if kind == "enabled":
        thinking["budget_tokens"] = 1024
    message = await sdk.messages.create(
        model=MODEL, max_tokens=2000, messages=ASK, thinking=thinking
    )
    thinks = kind in ("enabled", "adaptive")
    assert (message.content[0].type == "thinking") is thinks
    counted = await sdk.messages.count_tokens(model=MODEL, messages=ASK, thinking=thinking)
    assert counted.input_tokens == message.usage.input_tokens


async def test_thinking_in_a_batch_result(sdk: anthropic.AsyncAnthropic) -> None:
    params = {"model": MODEL, "max_tokens": 2000, "messages": ASK}
    thinking = {"type": "enabled", "budget_tokens": 1024}
    batch = await sdk.messages.batches.create(
        requests=[{"custom_id": "t", "params": {**params, "thinking": thinking}}]
    )
    results = [r async for r in await sdk.messages.batches.results(batch.id)]
    message = results[0].result.message
    assert [b.type for b in message.content] == ["thinking", "text"]
    plain = await sdk.messages.create(**params, thinking=thinking)
    assert message.content == plain.content
    assert message.usage.output_tokens == plain.usage.output_tokens


async def test_models_list_pages_and_retrieve(sdk: anthropic.AsyncAnthropic) -> None:
    first = await sdk.models.list()
    assert len(first.data) == 20
    assert first.has_more
    everything = [m async for m in sdk.models.list(limit=7)]
    ids = [m.id for m in everything]
    assert ids[:20] == [m.id for m in first.data]
    assert len(ids) == len(set(ids)) > 20
    assert all(m.type == "model" and m.display_name for m in everything)
    assert all(m.lifecycle in ("active", "deprecated") for m in everything)
    # newest first, as the service lists them: dated models in date order
    dated = [m.created_at for m in everything if m.created_at.year > 1970]
    assert dated == sorted(dated, reverse=True)
    one = await sdk.models.retrieve(ids[3])
    assert one == everything[3]
    back = await sdk.models.list(before_id=ids[10], limit=3)
    assert [m.id for m in back.data] == ids[7:10]
    assert (back.first_id, back.last_id) == (ids[7], ids[9])
    retired = [m async for m in sdk.models.list(lifecycle=["retired"])]
    assert retired
    assert all(m.lifecycle == "retired" for m in retired)
    alias = await sdk.models.retrieve("claude-opus-4-1")
    assert alias.id == "claude-opus-4-1-20250805"
    with pytest.raises(anthropic.NotFoundError, match="model: claude-nope"):
        await sdk.models.retrieve("claude-nope")


@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
async def test_every_model_the_sdk_names_is_served(sdk: anthropic.AsyncAnthropic) -> None:
    """Fails when a newer SDK names a model the emulator does not know yet: add it to
    ``KNOWN_MODELS`` and to the emulator's catalogue."""
    listed = {m.id async for m in sdk.models.list(limit=1000)}
    missing = []
    for name in sdk_models():
        try:
            info = await sdk.models.retrieve(name)
        except anthropic.NotFoundError:
            missing.append(name)
            continue
        assert info.lifecycle != "retired", name
        assert info.id in listed, name
        answer = await sdk.messages.create(
            model=name, max_tokens=5, messages=[{"role": "user", "content": "hi"}]
        )
        assert answer.model == name
    assert missing == [], f"the SDK names models the emulator does not know: {missing}"


@pytest.mark.filterwarnings("ignore:The model .* is deprecated:DeprecationWarning")
@pytest.mark.parametrize("model", ["claude-nope-9", "claude-2.1"])
async def test_an_unknown_or_retired_model_is_not_found(
    sdk: anthropic.AsyncAnthropic, model: str
) -> None:
    ask: dict[str, Any] = {"model": model, "messages": ASK}
    with pytest.raises(anthropic.NotFoundError, match=f"model: {model}") as caught:
        await sdk.messages.create(max_tokens=5, **ask)
    assert caught.value.body["error"]["type"] == "not_found_error"
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.count_tokens(**ask)
    with pytest.raises(anthropic.NotFoundError):
        await streamed(sdk, max_tokens=5, **ask)
    batch = await sdk.messages.batches.create(
        requests=[{"custom_id": "x", "params": {"max_tokens": 5, **ask}}]
    )
    (line,) = [r async for r in await sdk.messages.batches.results(batch.id)]
    assert line.result.type == "errored"
    assert line.result.error.error.type == "not_found_error"
    assert line.result.error.error.message == f"model: {model}"


async def test_anthropic_version_is_required_on_every_route(emu: EmulatorHandle) -> None:
    without = {"anthropic-version": anthropic.Omit()}
    async with anthropic.AsyncAnthropic(
        api_key=KEY, base_url=emu.url, max_retries=0, default_headers=without
    ) as bare:
        calls = [
            bare.messages.create(model=MODEL, max_tokens=5, messages=ASK),
            bare.messages.count_tokens(model=MODEL, messages=ASK),
            bare.messages.batches.list(),
            bare.messages.batches.retrieve("msgbatch_000000000000000000000000"),
            bare.models.list(),
            bare.models.retrieve(MODEL),
        ]
        for call in calls:
            with pytest.raises(anthropic.BadRequestError, match="anthropic-version") as caught:
                await call
            assert caught.value.body["error"]["type"] == "invalid_request_error"
    for version in ("2023-06-01", "2026-10-21"):
        async with anthropic.AsyncAnthropic(
            api_key=KEY,
            base_url=emu.url,
            max_retries=0,
            default_headers={"anthropic-version": version},
        ) as dated:
            assert (await dated.models.retrieve(MODEL)).id == MODEL
