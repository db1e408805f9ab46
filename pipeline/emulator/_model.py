"""A deterministic fake model: the same params always give the same answer.

The text is a handful of words picked by a hash of the last user message, so a
test can compute the expected answer; usage counts about one token per four bytes
of input and one per output word. ``max_tokens`` truncates (``stop_reason``
``max_tokens``), a stop sequence found in the text stops there, and a
``tool_choice`` that forces a tool gives a ``tool_use`` block whose input is built
from the tool's ``input_schema``.
"""

from __future__ import annotations

import hashlib
from typing import Any

import msgspec

from pipeline.api._types import (
    Message,
    MessageParam,
    TextBlockParam,
    Tool,
    ToolChoiceAny,
    ToolChoiceTool,
    ToolResultBlockParam,
    Usage,
)

__all__ = ("count_input_tokens", "last_user_text", "reply_text", "respond")

_WORDS = (
    "alpha bravo cobalt delta ember fjord glacier harbor indigo juniper kelp lantern "
    "meadow nectar orchid pebble quartz river saffron timber umber violet willow xenon "
    "yarrow zephyr amber basalt cedar dune echo fern granite hazel iris jade kestrel "
    "lichen maple nova onyx pine quill reed sage tide ursa vale wren yew zinc acorn "
    "birch clover dawn elm flint grove heron isle lark moss north oak"
).split()
_MIN_WORDS = 4
#: byte value -> word, so that picking words is one C-level map over the digest
_BY_BYTE = tuple(_WORDS[b % len(_WORDS)] for b in range(256))
_encoder = msgspec.json.Encoder()
_MAX_SCHEMA_DEPTH = 8


def _block_text(block: object) -> str:
    if isinstance(block, TextBlockParam):
        return block.text
    if isinstance(block, ToolResultBlockParam):
        content = block.content
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            return " ".join(b.text for b in content if isinstance(b, TextBlockParam))
    return ""


def last_user_text(messages: list[MessageParam]) -> str:
    """The text of the last user message (its text blocks joined), or ``""``."""
    for message in reversed(messages):
        if message.role != "user":
            continue
        if isinstance(message.content, str):
            return message.content
        return " ".join(_block_text(b) for b in message.content)
    return ""


def reply_text(prompt: str) -> list[str]:
    """The words the model answers to ``prompt``: 4 to 27 words chosen by its hash."""
    digest = hashlib.blake2b(prompt.encode(), digest_size=32).digest()
    count = _MIN_WORDS + digest[0] % 24
    return list(map(_BY_BYTE.__getitem__, digest[1 : 1 + count]))


def count_input_tokens(messages: object, system: object, tools: object) -> int:
    """Plausible input tokens: one per four bytes of the prompt's JSON, at least 1."""
    size = len(_encoder.encode(messages))
    if system is not msgspec.UNSET:
        size += len(_encoder.encode(system))
    if tools is not msgspec.UNSET:
        size += len(_encoder.encode(tools))
    return size // 4 + 1


def _schema_value(schema: Any, depth: int = 0) -> Any:
    """A value that satisfies a (simple) JSON schema: required properties filled."""
    if not isinstance(schema, dict) or depth > _MAX_SCHEMA_DEPTH:
        return "value"
    for key in ("const", "default"):
        if key in schema:
            return schema[key]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "null")
    if kind == "object" or (kind is None and "properties" in schema):
        props = schema.get("properties") or {}
        required = schema.get("required") or []
        return {name: _schema_value(props.get(name), depth + 1) for name in required}
    if kind == "array":
        if schema.get("minItems", 0) > 0:
            return [_schema_value(schema.get("items"), depth + 1)] * schema["minItems"]
        return []
    simple: dict[str, Any] = {"integer": 1, "number": 1.5, "boolean": True, "null": None}
    return simple.get(kind, "value") if isinstance(kind, str) else "value"


def _forced_tool(params: Any) -> Tool | None:
    choice = params.tool_choice
    tools: list[Tool] = params.tools if params.tools is not msgspec.UNSET else []
    if isinstance(choice, ToolChoiceTool):
        return next((t for t in tools if t.name == choice.name), None)
    if isinstance(choice, ToolChoiceAny) and tools:
        return tools[0]
    return None


def _stop(text: str, stop_sequences: Any) -> tuple[str, str | None]:
    if stop_sequences is msgspec.UNSET:
        return text, None
    best: tuple[int, str] | None = None
    for seq in stop_sequences:
        at = text.find(seq) if seq else -1
        if at >= 0 and (best is None or at < best[0]):
            best = (at, seq)
    return (text, None) if best is None else (text[: best[0]], best[1])


def respond(params: Any, raw: bytes, *, service_tier: str = "batch") -> Message:
    """The model's answer to ``params`` (a ``MessageCreateParams``); ``raw`` is the
    encoded params, hashed into the message id."""
    digest = hashlib.blake2b(raw, digest_size=12).hexdigest()
    input_tokens = count_input_tokens(params.messages, params.system, params.tools)
    tool = _forced_tool(params)
    content: list[dict[str, Any]]
    if tool is not None:
        value = _schema_value(tool.input_schema if tool.input_schema is not msgspec.UNSET else {})
        block = {"type": "tool_use", "id": f"toolu_{digest}", "name": tool.name, "input": value}
        content = [block]
        output = min(params.max_tokens, len(_encoder.encode(value)) // 4 + 8)
        stop_reason, stop_sequence = "tool_use", None
    else:
        words = reply_text(last_user_text(params.messages))
        stop_reason = "end_turn"
        if params.max_tokens < len(words):
            words, stop_reason = words[: params.max_tokens], "max_tokens"
        text, stop_sequence = _stop(" ".join(words), params.stop_sequences)
        if stop_sequence is not None:
            stop_reason = "stop_sequence"
            words = text.split()
        content = [{"type": "text", "text": text, "citations": None}]
        output = max(1, len(words))
    usage = Usage(input_tokens, output, 0, 0, service_tier)  # type: ignore[arg-type]
    return Message(
        id=f"msg_{digest}",
        model=params.model,
        content=content,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        usage=usage,
    )
