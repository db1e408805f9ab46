"""Our wire types against the official SDK's: what we encode the SDK decodes, and back."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

import msgspec
import pytest
from anthropic.pagination import AsyncPage
from anthropic.types import Message as SdkMessage
from anthropic.types.messages import DeletedMessageBatch as SdkDeleted
from anthropic.types.messages import MessageBatch as SdkBatch
from anthropic.types.messages import MessageBatchIndividualResponse as SdkResultLine
from anthropic.types.shared import ErrorResponse as SdkErrorResponse

from pipeline.api import _types as w

if TYPE_CHECKING:
    from anthropic.types.message_create_params import MessageCreateParamsNonStreaming
    from pydantic import BaseModel

T0 = "2024-09-24T18:37:24.100435Z"
T1 = "2024-09-25T18:37:24.100435Z"


def batch(status: str = "in_progress", **fields: Any) -> w.MessageBatch:
    fields.setdefault("request_counts", w.RequestCounts(processing=3))
    return w.MessageBatch(
        id="msgbatch_013Zva2CMHLNnXjNJJKqJ2EF",
        processing_status=status,  # type: ignore[arg-type]
        created_at=T0,
        expires_at=T1,
        **fields,
    )


BATCHES = [
    batch("in_progress"),
    batch("canceling", cancel_initiated_at="2024-09-24T18:40:00Z"),
    batch(
        "ended",
        request_counts=w.RequestCounts(succeeded=2, errored=1, canceled=1, expired=1),
        ended_at="2024-09-24T19:00:00Z",
        cancel_initiated_at="2024-09-24T18:40:00Z",
        results_url="https://api.anthropic.com/v1/messages/batches/msgbatch_1/results",
    ),
    batch(
        "ended",
        ended_at="2024-09-24T19:00:00Z",
        archived_at="2024-10-23T18:37:24Z",
        results_url=None,
    ),
]


def roundtrip(ours: msgspec.Struct, sdk_type: type[BaseModel]) -> BaseModel:
    """ours -> JSON -> SDK (strict validation) -> JSON -> ours; both hops must agree."""
    encoded = msgspec.json.encode(ours)
    sdk = sdk_type.model_validate(json.loads(encoded))
    back = msgspec.json.decode(json.dumps(sdk.model_dump(mode="json")), type=type(ours))
    assert back == ours
    return sdk


@pytest.mark.parametrize("ours", BATCHES, ids=lambda b: f"{b.processing_status}")
def test_message_batch(ours: w.MessageBatch) -> None:
    sdk = roundtrip(ours, SdkBatch)
    assert isinstance(sdk, SdkBatch)
    assert sdk.processing_status == ours.processing_status
    assert sdk.request_counts.processing == ours.request_counts.processing
    assert sdk.results_url == ours.results_url
    assert (sdk.ended_at is None) == (ours.ended_at is None)
    # Every key is present, null when unset (API_CONTRACT.md section 13.3).
    encoded = json.loads(msgspec.json.encode(ours))
    assert set(encoded) == set(SdkBatch.model_fields)


def test_message_batch_list() -> None:
    ours = w.MessageBatchList(
        data=BATCHES[:2], has_more=True, first_id=BATCHES[0].id, last_id=BATCHES[1].id
    )
    encoded = msgspec.json.encode(ours)
    sdk = AsyncPage[SdkBatch].model_validate(json.loads(encoded))
    assert [b.id for b in sdk.data] == [b.id for b in ours.data]
    assert sdk.has_more is True
    back = msgspec.json.decode(json.dumps(sdk.model_dump(mode="json")), type=w.MessageBatchList)
    assert back == ours
    empty = w.MessageBatchList(data=[], has_more=False)
    assert AsyncPage[SdkBatch].model_validate_json(msgspec.json.encode(empty)).first_id is None


def test_deleted_batch() -> None:
    sdk = roundtrip(w.DeletedMessageBatch(id="msgbatch_1"), SdkDeleted)
    assert sdk.type == "message_batch_deleted"  # type: ignore[attr-defined]


MESSAGE = w.Message(
    id="msg_01",
    model="claude-sonnet-4-5",
    content=[
        {
            "type": "thinking",
            "thinking": "Let me think.",
            "signature": "sig==",
        },
        {"type": "redacted_thinking", "data": "opaque"},
        {"type": "text", "text": "Calling the tool.", "citations": None},
        {
            "type": "tool_use",
            "id": "toolu_01",
            "name": "get_weather",
            "input": {"city": "Paris", "days": 2},
        },
    ],
    stop_reason="tool_use",
    stop_sequence=None,
    usage=w.Usage(
        input_tokens=10,
        output_tokens=20,
        cache_creation_input_tokens=0,
        cache_read_input_tokens=5,
        service_tier="batch",
    ),
)


def test_message_with_every_common_block() -> None:
    encoded = msgspec.json.encode(MESSAGE)
    sdk = SdkMessage.model_validate(json.loads(encoded))
    assert [b.type for b in sdk.content] == ["thinking", "redacted_thinking", "text", "tool_use"]
    assert sdk.usage.service_tier == "batch"
    assert sdk.stop_reason == "tool_use"
    dumped = sdk.model_dump(mode="json")
    back = msgspec.json.decode(json.dumps(dumped), type=w.Message)
    assert back.id == MESSAGE.id
    assert back.usage == MESSAGE.usage
    assert back.stop_reason == MESSAGE.stop_reason
    # The SDK adds optional keys (null) to blocks; ours keeps them as given.
    for ours_block, back_block in zip(MESSAGE.content, back.content, strict=True):
        for key, value in ours_block.items():
            assert back_block[key] == value


def test_message_minimal_usage_and_null_stop() -> None:
    ours = w.Message(
        id="msg_2", model="m", content=[], usage=w.Usage(input_tokens=1, output_tokens=0)
    )
    sdk = roundtrip(ours, SdkMessage)
    assert sdk.stop_reason is None  # type: ignore[attr-defined]


SDK_ERROR_TYPES = sorted(w.ERROR_TYPES - {"request_too_large"})


@pytest.mark.parametrize("error_type", SDK_ERROR_TYPES)
def test_error_response_each_type(error_type: str) -> None:
    ours = w.ErrorResponse(
        error=w.ErrorDetail(type=error_type, message=f"{error_type} happened"),
        request_id="req_011",
    )
    sdk = roundtrip(ours, SdkErrorResponse)
    assert sdk.error.type == error_type  # type: ignore[attr-defined]
    assert w.error_body(error_type, "m", "req_1") == msgspec.json.encode(
        w.ErrorResponse(error=w.ErrorDetail(type=error_type, message="m"), request_id="req_1")
    )


def test_request_too_large_is_not_an_sdk_result_error() -> None:
    # API_CONTRACT.md section 3: request_too_large is an HTTP error only, never a result.
    body = w.error_body("request_too_large", "too big")
    with pytest.raises(ValueError, match="request_too_large|type"):
        SdkErrorResponse.model_validate_json(body)
    assert w.ERROR_STATUS["request_too_large"] == 413


RESULT_LINES = [
    w.ResultLine(custom_id="ok-1", result=w.SucceededResult(message=MESSAGE)),
    w.ResultLine(
        custom_id="err_2",
        result=w.ErroredResult(
            error=w.ErrorResponse(
                error=w.ErrorDetail(type="invalid_request_error", message="max_tokens: too big"),
                request_id=None,
            )
        ),
    ),
    w.ResultLine(custom_id="c3", result=w.CanceledResult()),
    w.ResultLine(custom_id="e4", result=w.ExpiredResult()),
]


@pytest.mark.parametrize("ours", RESULT_LINES, ids=lambda r: type(r.result).__name__)
def test_result_line_each_kind(ours: w.ResultLine) -> None:
    encoded = msgspec.json.encode(ours)
    sdk = SdkResultLine.model_validate(json.loads(encoded))
    assert sdk.custom_id == ours.custom_id
    assert sdk.result.type == json.loads(encoded)["result"]["type"]
    back = msgspec.json.decode(json.dumps(sdk.model_dump(mode="json")), type=w.ResultLine)
    assert back.custom_id == ours.custom_id
    assert type(back.result) is type(ours.result)
    if isinstance(ours.result, w.ErroredResult):
        assert back == ours
    if isinstance(ours.result, w.SucceededResult):
        assert isinstance(back.result, w.SucceededResult)
        assert back.result.message.usage == ours.result.message.usage


def test_sdk_built_result_lines_decode_with_ours() -> None:
    sdk = SdkResultLine.model_validate(
        {
            "custom_id": "x",
            "result": {
                "type": "errored",
                "error": {
                    "type": "error",
                    "error": {"type": "overloaded_error", "message": "busy"},
                    "request_id": "req_9",
                },
            },
        }
    )
    ours = msgspec.json.decode(json.dumps(sdk.model_dump(mode="json")), type=w.ResultLine)
    assert isinstance(ours.result, w.ErroredResult)
    assert ours.result.error.error.type == "overloaded_error"
    assert ours.result.error.request_id == "req_9"


# -- request params -----------------------------------------------------------------------

RICH_PARAMS: MessageCreateParamsNonStreaming = {
    "model": "claude-sonnet-4-5",
    "max_tokens": 2048,
    "system": [
        {
            "type": "text",
            "text": "You are terse.",
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ],
    "messages": [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is in this image and document?"},
                {
                    "type": "image",
                    "source": {"type": "base64", "media_type": "image/png", "data": "iVBORw0KGgo="},
                },
                {"type": "image", "source": {"type": "url", "url": "https://example.com/a.jpg"}},
                {
                    "type": "document",
                    "source": {"type": "text", "media_type": "text/plain", "data": "Plain text."},
                    "title": "Notes",
                    "context": "From the wiki",
                    "citations": {"enabled": True},
                },
                {
                    "type": "document",
                    "source": {
                        "type": "base64",
                        "media_type": "application/pdf",
                        "data": "JVBERi0=",
                    },
                    "cache_control": {"type": "ephemeral"},
                },
                {
                    "type": "document",
                    "source": {"type": "content", "content": [{"type": "text", "text": "chunk"}]},
                },
            ],
        },
        {
            "role": "assistant",
            "content": [
                {"type": "thinking", "thinking": "Need the weather.", "signature": "sig"},
                {"type": "redacted_thinking", "data": "opaque"},
                {"type": "text", "text": "Let me check."},
                {
                    "type": "tool_use",
                    "id": "toolu_01",
                    "name": "get_weather",
                    "input": {"city": "Paris"},
                },
            ],
        },
        {
            "role": "user",
            "content": [
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_01",
                    "content": [{"type": "text", "text": "Sunny, 21C"}],
                    "is_error": False,
                },
                {
                    "type": "tool_result",
                    "tool_use_id": "toolu_02",
                    "content": "plain string result",
                },
            ],
        },
    ],
    "tools": [
        {
            "name": "get_weather",
            "description": "Weather for a city",
            "input_schema": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
            "cache_control": {"type": "ephemeral"},
        },
        {"type": "web_search_20250305", "name": "web_search", "max_uses": 3},
    ],
    "tool_choice": {"type": "tool", "name": "get_weather", "disable_parallel_tool_use": True},
    "thinking": {"type": "enabled", "budget_tokens": 1024},
    "metadata": {"user_id": "user-1234"},
    "stop_sequences": ["\n\nHuman:", "END"],
    "service_tier": "standard_only",
}


def test_rich_sdk_params_decode_strictly_and_round_trip() -> None:
    raw = msgspec.json.encode(RICH_PARAMS)
    ours = msgspec.json.decode(raw, type=w.MessageCreateParams)
    assert isinstance(ours.tool_choice, w.ToolChoiceTool)
    assert isinstance(ours.thinking, w.ThinkingEnabled)
    assert isinstance(ours.system, list)
    assert ours.system[0].cache_control == w.CacheControl(type="ephemeral", ttl="1h")
    first = ours.messages[0].content
    assert isinstance(first, list)
    assert [type(b).__name__ for b in first] == [
        "TextBlockParam",
        "ImageBlockParam",
        "ImageBlockParam",
        "DocumentBlockParam",
        "DocumentBlockParam",
        "DocumentBlockParam",
    ]
    # Encoding ours gives back what the SDK-shaped dict held, except the fields of
    # server tools, which ``Tool`` lets through unchecked and does not keep (the
    # pipeline splices the original line bytes, so nothing is lost on the wire).
    expected = json.loads(raw)
    expected["tools"][1].pop("max_uses")
    assert json.loads(msgspec.json.encode(ours)) == expected


@pytest.mark.parametrize(
    "tool_choice",
    [{"type": "auto"}, {"type": "any", "disable_parallel_tool_use": False}, {"type": "none"}],
)
def test_tool_choice_variants(tool_choice: dict[str, Any]) -> None:
    params = {"model": "m", "max_tokens": 1, "messages": [], "tool_choice": tool_choice}
    ours = msgspec.json.decode(msgspec.json.encode(params), type=w.MessageCreateParams)
    assert json.loads(msgspec.json.encode(ours))["tool_choice"] == tool_choice


@pytest.mark.parametrize(
    "thinking",
    [{"type": "disabled"}, {"type": "adaptive"}, {"type": "enabled", "budget_tokens": 2048}],
)
def test_thinking_variants(thinking: dict[str, Any]) -> None:
    params = {"model": "m", "max_tokens": 4096, "messages": [], "thinking": thinking}
    ours = msgspec.json.decode(msgspec.json.encode(params), type=w.MessageCreateParams)
    assert json.loads(msgspec.json.encode(ours))["thinking"] == thinking


@pytest.mark.parametrize(
    "bad",
    [
        {"model": "m", "max_tokens": 1, "messages": [], "unknown_field": 1},
        {"model": "m", "max_tokens": 0, "messages": []},
        {"model": "m", "max_tokens": 1, "messages": [{"role": "robot", "content": "x"}]},
        {"model": "m", "max_tokens": 1, "messages": [], "temperature": 1.5},
        {
            "model": "m",
            "max_tokens": 1,
            "messages": [{"role": "user", "content": [{"type": "txt", "text": "x"}]}],
        },
    ],
)
def test_strict_params_reject(bad: dict[str, Any]) -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(msgspec.json.encode(bad), type=w.MessageCreateParams)


def test_string_system_and_string_content() -> None:
    params = {
        "model": "m",
        "max_tokens": 5,
        "system": "Be kind.",
        "messages": [{"role": "user", "content": "hi"}],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 5,
    }
    ours = msgspec.json.decode(msgspec.json.encode(params), type=w.MessageCreateParams)
    assert ours.system == "Be kind."
    assert json.loads(msgspec.json.encode(ours)) == params
