"""The schema corpus: bad batch entries, each with the exact reject reason
``check_entry`` must give (field path + rule), and good ones of every kind. Shared
by the schema's tests and the pipeline's (``tests/test_pipeline_corpus.py``)."""

from __future__ import annotations

from typing import Any

import msgspec

MODEL = "claude-3-5-sonnet-20241022"
USER = {"role": "user", "content": "Hello"}
TOOL = {"name": "get_weather", "input_schema": {"type": "object", "properties": {}}}


def entry(**params: Any) -> bytes:
    base: dict[str, Any] = {"model": MODEL, "max_tokens": 100, "messages": [USER]}
    base.update(params)
    for key in [k for k, v in base.items() if v is DROP]:
        del base[key]
    return msgspec.json.encode({"custom_id": "req-1", "params": base})


DROP = object()
VALID = {"model": MODEL, "max_tokens": 100, "messages": [USER]}
TOOL_USE = {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {}}
TOOL_RESULT = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "sunny"}
USER2 = {"role": "user", "content": [TOOL_RESULT]}
#: a custom tool with every field the SDK's ToolParam defines
FULL_TOOL = {
    "name": "get_weather",
    "input_schema": {"type": "object", "properties": {}, "additionalProperties": False},
    "type": "custom",
    "description": "Weather by city",
    "cache_control": {"type": "ephemeral"},
    "allowed_callers": ["direct"],
    "defer_loading": False,
    "eager_input_streaming": None,
    "input_examples": [{}],
    "strict": True,
}
CACHED = {"type": "ephemeral"}
CACHED_5M = {"type": "ephemeral", "ttl": "5m"}
CACHED_1H = {"type": "ephemeral", "ttl": "1h"}
TTL_ORDER = (
    "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block. "
    "Note that blocks are processed in the following order: `tools`, `system`, `messages`."
)


def marked(block: dict[str, Any], cache_control: object = CACHED) -> dict[str, Any]:
    """``block`` with a cache_control breakpoint."""
    return {**block, "cache_control": cache_control}


def text(value: str) -> dict[str, Any]:
    return {"type": "text", "text": value}


# (id, raw entry, expected message)
CORPUS: list[tuple[str, bytes, str]] = [
    ("not-json", b'{"custom_id": "a", ', "not valid JSON: input data was truncated"),
    ("not-object", b"[1, 2]", "expected `object`, got `array`"),
    (
        "no-custom-id",
        msgspec.json.encode({"params": VALID}),
        "object missing required field `custom_id`",
    ),
    (
        "bad-custom-id",
        msgspec.json.encode({"custom_id": "a b", "params": {}}),
        "custom_id: expected `str` matching regex '^[a-zA-Z0-9_-]{1,64}$'",
    ),
    (
        "long-custom-id",
        msgspec.json.encode({"custom_id": "x" * 65, "params": {}}),
        "custom_id: expected `str` of length <= 64",
    ),
    (
        "unknown-entry-field",
        msgspec.json.encode({"custom_id": "a", "params": VALID, "x": 1}),
        "unknown field `x`",
    ),
    ("no-model", entry(model=DROP), "params: object missing required field `model`"),
    ("empty-model", entry(model=""), "params.model: expected `str` of length >= 1"),
    ("unknown-model", entry(model="claude-9"), 'params.model: unknown model "claude-9"'),
    ("no-max-tokens", entry(max_tokens=DROP), "params: object missing required field `max_tokens`"),
    ("zero-max-tokens", entry(max_tokens=0), "params.max_tokens: expected `int` >= 1"),
    ("float-max-tokens", entry(max_tokens=1.5), "params.max_tokens: expected `int`, got `float`"),
    (
        "max-tokens-over-cap",
        entry(model="claude-3-haiku-20240307", max_tokens=5000),
        "params.max_tokens: 5000 > 4096, the maximum for claude-3-haiku-20240307",
    ),
    ("no-messages", entry(messages=DROP), "params: object missing required field `messages`"),
    ("empty-messages", entry(messages=[]), "params.messages: must hold at least one message"),
    (
        "bad-role",
        entry(messages=[{"role": "robot", "content": "hi"}]),
        "params.messages[0].role: invalid enum value 'robot'",
    ),
    (
        "no-content",
        entry(messages=[{"role": "user"}]),
        "params.messages[0]: object missing required field `content`",
    ),
    (
        "empty-content",
        entry(messages=[{"role": "user", "content": ""}]),
        "params.messages[0].content: all messages must have non-empty content except for "
        "the optional final assistant message",
    ),
    (
        "empty-block-list",
        entry(messages=[USER, {"role": "assistant", "content": []}, USER]),
        "params.messages[1].content: all messages must have non-empty content except for "
        "the optional final assistant message",
    ),
    (
        "unknown-block",
        entry(
            messages=[
                USER,
                {"role": "assistant", "content": "ok"},
                {"role": "user", "content": [{"type": "imagee"}]},
            ]
        ),
        'params.messages[2].content[0].type: unknown block type "imagee"',
    ),
    (
        "block-without-type",
        entry(messages=[{"role": "user", "content": [{"text": "hi"}]}]),
        "params.messages[0].content[0]: object missing required field `type`",
    ),
    (
        "empty-text-block",
        entry(messages=[{"role": "user", "content": [{"type": "text", "text": ""}]}]),
        "params.messages[0].content[0].text: text content blocks must contain non-whitespace text",
    ),
    (
        "whitespace-text-block",
        entry(messages=[{"role": "user", "content": [{"type": "text", "text": " \n"}]}]),
        "params.messages[0].content[0].text: text content blocks must contain non-whitespace text",
    ),
    (
        "unknown-block-field",
        entry(
            messages=[{"role": "user", "content": [{"type": "text", "text": "a", "bold": True}]}]
        ),
        "params.messages[0].content[0]: unknown field `bold`",
    ),
    (
        "image-bad-media-type",
        entry(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {"type": "base64", "media_type": "image/bmp", "data": "AAAA"},
                        }
                    ],
                }
            ]
        ),
        "params.messages[0].content[0].source.media_type: invalid enum value 'image/bmp'",
    ),
    (
        "image-pdf",
        entry(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "image",
                            "source": {
                                "type": "base64",
                                "media_type": "application/pdf",
                                "data": "AAAA",
                            },
                        }
                    ],
                }
            ]
        ),
        'params.messages[0].content[0].source.media_type: "application/pdf" is not an image '
        "type (image/jpeg, image/png, image/gif, image/webp)",
    ),
    (
        "image-unknown-source",
        entry(
            messages=[
                {
                    "role": "user",
                    "content": [{"type": "image", "source": {"type": "ftp", "url": "x"}}],
                }
            ]
        ),
        'params.messages[0].content[0].source.type: unknown source type "ftp"',
    ),
    (
        "document-not-pdf",
        entry(
            messages=[
                {
                    "role": "user",
                    "content": [
                        {
                            "type": "document",
                            "source": {"type": "base64", "media_type": "image/png", "data": "AAAA"},
                        }
                    ],
                }
            ]
        ),
        'params.messages[0].content[0].source.media_type: base64 documents must be "application/pdf", got "image/png"',
    ),
    (
        "tool-use-in-user",
        entry(messages=[{"role": "user", "content": [TOOL_USE]}], tools=[TOOL]),
        "params.messages[0].content[0].type: tool_use blocks are only allowed in assistant messages",
    ),
    (
        "tool-result-in-assistant",
        entry(messages=[USER, {"role": "assistant", "content": [TOOL_RESULT]}], tools=[TOOL]),
        "params.messages[1].content[0].type: tool_result blocks are only allowed in user messages",
    ),
    (
        "tool-result-without-use",
        entry(messages=[{"role": "user", "content": [TOOL_RESULT]}], tools=[TOOL]),
        'params.messages[0].content[0].tool_use_id: "toolu_1" answers no tool_use block of the previous message',
    ),
    (
        "tool-use-unanswered",
        entry(messages=[USER, {"role": "assistant", "content": [TOOL_USE]}, USER], tools=[TOOL]),
        "params.messages[2].content: tool_use ids of messages[1] have no tool_result block "
        "in the next message: toolu_1",
    ),
    (
        "tool-result-after-text",
        entry(
            messages=[
                USER,
                {"role": "assistant", "content": [TOOL_USE]},
                {"role": "user", "content": [text("Here it is"), TOOL_RESULT]},
            ],
            tools=[TOOL],
        ),
        "params.messages[2].content[1].type: Did not find 1 `tool_result` block(s) at the "
        "beginning of this message. Messages following `tool_use` blocks must begin with a "
        "matching number of `tool_result` blocks.",
    ),
    (
        "trailing-whitespace-prefill",
        entry(messages=[USER, {"role": "assistant", "content": "The answer is "}]),
        "params.messages[1].content: final assistant content cannot end with trailing whitespace",
    ),
    ("system-wrong-type", entry(system=5), "params.system: expected `str | array`, got `int`"),
    (
        "system-empty-block",
        entry(system=[{"type": "text", "text": ""}]),
        "params.system[0].text: text content blocks must contain non-whitespace text",
    ),
    (
        "system-image-block",
        entry(system=[{"type": "image", "source": {"type": "url", "url": "http://x"}}]),
        'params.system[0].type: unknown object type "image"',
    ),
    (
        "tool-no-name",
        entry(tools=[{"input_schema": {"type": "object"}}]),
        "params.tools[0]: object missing required field `name`",
    ),
    (
        "tool-bad-name",
        entry(tools=[{"name": "get weather", "input_schema": {"type": "object"}}]),
        "params.tools[0].name: must match ^[a-zA-Z0-9_-]{1,128}$, got 'get weather'",
    ),
    (
        "tool-no-schema",
        entry(tools=[{"name": "t"}]),
        "params.tools[0].input_schema: required for custom tools",
    ),
    (
        "tool-schema-not-object",
        entry(tools=[{"name": "t", "input_schema": {"type": "array"}}]),
        'params.tools[0].input_schema.type: must be "object"',
    ),
    (
        "tool-unknown-type",
        entry(tools=[{"type": "function", "name": "t", "input_schema": {"type": "object"}}]),
        'params.tools[0].type: unknown tool type "function" (custom tools leave it out)',
    ),
    (
        "tool-duplicate",
        entry(tools=[TOOL, TOOL]),
        'params.tools[1].name: tool names must be unique, "get_weather" is defined twice',
    ),
    (
        "tool-misspelt-field",
        entry(tools=[{"name": "t", "descripton": "Looks up", "input_schema": {"type": "object"}}]),
        "params.tools[0]: unknown field `descripton`",
    ),
    (
        "custom-tool-unknown-field",
        entry(
            tools=[
                TOOL,
                {"type": "custom", "name": "u", "input_schema": {"type": "object"}, "x": 1},
            ],
            messages=[
                USER,
                {"role": "assistant", "content": [TOOL_USE]},
                {"role": "user", "content": [TOOL_RESULT]},
            ],
        ),
        "params.tools[1]: unknown field `x`",
    ),
    (
        "tool-choice-unknown-type",
        entry(tools=[TOOL], tool_choice={"type": "required"}),
        'params.tool_choice.type: unknown tool_choice type "required"',
    ),
    (
        "tool-choice-any-without-tools",
        entry(tool_choice={"type": "any"}),
        'params.tool_choice: type "any" requires tools',
    ),
    (
        "tool-choice-undefined-tool",
        entry(tools=[TOOL], tool_choice={"type": "tool", "name": "search"}),
        'params.tool_choice.name: no tool named "search" in tools',
    ),
    (
        "tool-choice-tool-without-name",
        entry(tools=[TOOL], tool_choice={"type": "tool"}),
        "params.tool_choice: object missing required field `name`",
    ),
    ("temperature-high", entry(temperature=1.5), "params.temperature: expected `float` <= 1.0"),
    (
        "temperature-negative",
        entry(temperature=-0.1),
        "params.temperature: expected `float` >= 0.0",
    ),
    ("top-p-high", entry(top_p=2), "params.top_p: expected `float` <= 1.0"),
    ("top-k-negative", entry(top_k=-1), "params.top_k: expected `int` >= 0"),
    ("top-k-float", entry(top_k=0.5), "params.top_k: expected `int`, got `float`"),
    (
        "stop-not-list",
        entry(stop_sequences="END"),
        "params.stop_sequences: expected `array`, got `str`",
    ),
    (
        "stop-empty",
        entry(stop_sequences=["END", ""]),
        "params.stop_sequences[1]: each stop sequence must contain non-whitespace text",
    ),
    (
        "stop-whitespace",
        entry(stop_sequences=["  "]),
        "params.stop_sequences[0]: each stop sequence must contain non-whitespace text",
    ),
    ("metadata-unknown", entry(metadata={"user": "x"}), "params.metadata: unknown field `user`"),
    (
        "metadata-long",
        entry(metadata={"user_id": "u" * 257}),
        "params.metadata.user_id: expected `str` of length <= 256",
    ),
    (
        "stream-true",
        entry(stream=True),
        "params.stream: streaming is not supported in batches (must be false or absent)",
    ),
    ("unknown-param", entry(temprature=0.5), "params: unknown field `temprature`"),
    (
        "thinking-budget-small",
        entry(max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 100}),
        "params.thinking.budget_tokens: expected `int` >= 1024",
    ),
    (
        "thinking-budget-over-max",
        entry(max_tokens=2000, thinking={"type": "enabled", "budget_tokens": 2000}),
        "params.thinking.budget_tokens: must be less than max_tokens (2000 >= 2000)",
    ),
    (
        "thinking-temperature",
        entry(
            max_tokens=4000, temperature=0.5, thinking={"type": "enabled", "budget_tokens": 1024}
        ),
        "params.temperature: may only be set to 1 when thinking is enabled",
    ),
    (
        "thinking-forced-tool",
        entry(
            max_tokens=4000,
            tools=[TOOL],
            tool_choice={"type": "any"},
            thinking={"type": "enabled", "budget_tokens": 1024},
        ),
        "params.tool_choice: thinking may not be enabled when tool_choice forces tool use",
    ),
    (
        "thinking-unknown-type",
        entry(thinking={"type": "on"}),
        'params.thinking.type: unknown thinking type "on"',
    ),
    (
        "cache-control-bad",
        entry(system=[{"type": "text", "text": "s", "cache_control": {"type": "forever"}}]),
        "params.system[0].cache_control.type: invalid enum value 'forever'",
    ),
    (
        # counted over tools, system and message blocks together; the path names
        # the first breakpoint over the limit
        "cache-breakpoints-over-four",
        entry(
            tools=[marked(TOOL)],
            system=[marked(text("a")), marked(text("b"))],
            messages=[{"role": "user", "content": [marked(text("c")), marked(text("d"))]}],
        ),
        "params.messages[0].content[1].cache_control: "
        "A maximum of 4 blocks with cache_control may be provided. Found 5.",
    ),
    (
        "cache-breakpoints-on-every-block-kind",
        entry(
            tools=[TOOL],
            messages=[
                {
                    "role": "user",
                    "content": [
                        marked({"type": "image", "source": {"type": "url", "url": "https://x/y"}}),
                        marked(
                            {"type": "document", "source": {"type": "url", "url": "https://x/d"}}
                        ),
                        marked(text("Weather?")),
                    ],
                },
                {"role": "assistant", "content": [marked(TOOL_USE)]},
                {"role": "user", "content": [marked(TOOL_RESULT), marked(text("thanks"))]},
            ],
        ),
        "params.messages[2].content[0].cache_control: "
        "A maximum of 4 blocks with cache_control may be provided. Found 6.",
    ),
    (
        # no ``ttl`` is the 5-minute default
        "cache-ttl-1h-after-5m",
        entry(
            system=[marked(text("s"))],
            messages=[{"role": "user", "content": [marked(text("q"), CACHED_1H)]}],
        ),
        f"params.messages[0].content[0].cache_control.ttl: {TTL_ORDER}",
    ),
    (
        "cache-ttl-tools-come-first",
        entry(tools=[marked(TOOL, CACHED_5M)], system=[marked(text("s"), CACHED_1H)]),
        f"params.system[0].cache_control.ttl: {TTL_ORDER}",
    ),
]


GOOD: list[bytes] = [
    entry(),
    entry(system="Be terse.", temperature=0.0, top_p=0.9, top_k=5, stop_sequences=["END"]),
    entry(
        metadata={"user_id": "u-1"},
        system=[{"type": "text", "text": "s", "cache_control": {"type": "ephemeral"}}],
    ),
    entry(messages=[USER, {"role": "assistant", "content": "Prefill"}]),
    entry(messages=[USER, {"role": "assistant", "content": []}]),
    entry(
        tools=[TOOL],
        tool_choice={"type": "tool", "name": "get_weather"},
        messages=[
            USER,
            {"role": "assistant", "content": [{"type": "text", "text": "Let me check."}, TOOL_USE]},
            {"role": "user", "content": [TOOL_RESULT, {"type": "text", "text": "thanks"}]},
        ],
    ),
    entry(
        tools=[{"type": "web_search_20250305", "name": "web_search", "max_uses": 3}],
        tool_choice={"type": "auto"},
    ),
    entry(tool_choice={"type": "none"}),
    entry(tools=[FULL_TOOL], messages=[USER, {"role": "assistant", "content": [TOOL_USE]}, USER2]),
    entry(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "image",
                        "source": {
                            "type": "base64",
                            "media_type": "image/png",
                            "data": "iVBORw0KGgo=",
                        },
                    },
                    {"type": "text", "text": "What is this?"},
                ],
            }
        ]
    ),
    entry(
        messages=[
            {
                "role": "user",
                "content": [
                    {
                        "type": "document",
                        "source": {
                            "type": "base64",
                            "media_type": "application/pdf",
                            "data": "JVBERi0=",
                        },
                    }
                ],
            }
        ]
    ),
    entry(model="claude-3-opus-20240229", max_tokens=4096, stream=False),
    entry(max_tokens=4000, thinking={"type": "enabled", "budget_tokens": 1024}, temperature=1.0),
    entry(thinking={"type": "disabled"}),
    # four breakpoints, an explicit null that is none, and 1h ones before 5m ones
    entry(
        tools=[marked(TOOL, CACHED_1H)],
        system=[marked(text("s"), CACHED_1H), marked(text("t"), None)],
        messages=[
            {"role": "user", "content": [marked(text("doc")), marked(text("q"), CACHED_5M)]},
            {"role": "assistant", "content": [marked(text("a"), None)]},
        ],
    ),
]
