"""A deterministic fake model: the same params always give the same answer.

The text is a handful of words picked by a hash of the last user message, so a
test can compute the expected answer (``reply_text``); usage counts about one token per four bytes
of input and one per output word. ``max_tokens`` truncates (``stop_reason``
``max_tokens``), a stop sequence found in the text stops there, and a
``tool_choice`` that forces a tool gives a ``tool_use`` block whose input is valid
for the tool's ``input_schema``, and a structured-output request
(``output_config.format``) gets JSON text valid for its schema (``_structured``).
With thinking ``enabled`` or ``adaptive`` the answer opens with a ``thinking`` block
(words of its own, and a signature), whose tokens count in ``output_tokens`` within
``budget_tokens`` and ``max_tokens``. The prompt cache's part of the usage comes from
``_cache``.
"""

from __future__ import annotations

import base64
import hashlib
import zlib
from typing import TYPE_CHECKING, Any

import msgspec

from pipeline.api._types import (
    CacheCreation,
    Message,
    MessageParam,
    TextBlockParam,
    ThinkingAdaptive,
    ThinkingEnabled,
    Tool,
    ToolChoiceAny,
    ToolChoiceTool,
    ToolResultBlockParam,
    Usage,
)

from ._structured import instance, output_schema

if TYPE_CHECKING:
    from ._cache import CacheUsage

__all__ = ("count_input_tokens", "last_user_text", "reply_text", "respond", "result_line")

_WORDS = (
    "alpha bravo cobalt delta ember fjord glacier harbor indigo juniper kelp lantern "
    "meadow nectar orchid pebble quartz river saffron timber umber violet willow xenon "
    "yarrow zephyr amber basalt cedar dune echo fern granite hazel iris jade kestrel "
    "lichen maple nova onyx pine quill reed sage tide ursa vale wren yew zinc acorn "
    "birch clover dawn elm flint grove heron isle lark moss north oak"
).split()
_MIN_WORDS = 4
_MAX_WORDS = 27
#: byte value -> word, so that picking words is one C-level map over bytes
_BY_BYTE = tuple(_WORDS[b % len(_WORDS)] for b in range(256))
_SEQUENCES = 2048
#: ``_SEQUENCES`` fixed word sequences of ``_MAX_WORDS`` words, end to end: an answer is
#: the start of one of them, so that answering costs one cheap hash and a list slice.
_TABLE = list(
    map(
        _BY_BYTE.__getitem__,
        hashlib.shake_256(b"pipeline.emulator words").digest(_SEQUENCES * _MAX_WORDS),
    )
)
_encoder = msgspec.json.Encoder()
_UNSET = msgspec.UNSET
#: ``thinking`` types that make the model think before it answers
_THINKING_ON = (ThinkingEnabled, ThinkingAdaptive)


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
    h = zlib.crc32(prompt.encode())
    start = (h % _SEQUENCES) * _MAX_WORDS
    return _TABLE[start : start + _MIN_WORDS + (h >> 11) % (_MAX_WORDS - _MIN_WORDS + 1)]


def count_input_tokens(messages: object, system: object, tools: object) -> int:
    """Plausible input tokens: one per four bytes of the prompt's JSON, at least 1."""
    size = len(_encoder.encode(messages))
    if system is not msgspec.UNSET:
        size += len(_encoder.encode(system))
    if tools is not msgspec.UNSET:
        size += len(_encoder.encode(tools))
    return size // 4 + 1


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


def _digest(raw: bytes) -> str:
    """The hex digest that names a message (and its tool_use block) of these params."""
    return hashlib.sha1(raw).hexdigest()[:24]


def _text_answer(params: Any) -> tuple[str, str, str | None, int]:
    """(text, stop_reason, stop_sequence, output_tokens) of a text answer."""
    words = reply_text(last_user_text(params.messages))
    stop_reason = "end_turn"
    if params.max_tokens < len(words):
        words, stop_reason = words[: params.max_tokens], "max_tokens"
    text = " ".join(words)
    if params.stop_sequences is msgspec.UNSET:
        return text, stop_reason, None, max(1, len(words))
    text, stop_sequence = _stop(text, params.stop_sequences)
    if stop_sequence is not None:
        return text, "stop_sequence", stop_sequence, max(1, len(text.split()))
    return text, stop_reason, None, max(1, len(words))


def _thinking(params: Any, digest: str) -> tuple[dict[str, Any] | None, int]:
    """The thinking block that opens the answer (None when thinking is off), and its
    tokens: a few words, within ``budget_tokens`` and leaving room in ``max_tokens``."""
    thinking = params.thinking
    if not isinstance(thinking, _THINKING_ON):
        return None, 0
    budget = thinking.budget_tokens if isinstance(thinking, ThinkingEnabled) else params.max_tokens
    words = reply_text("thinking about: " + last_user_text(params.messages))
    words = words[: max(1, min(budget, params.max_tokens - 1))]
    text = "" if thinking.display == "omitted" else " ".join(words)
    seal = hashlib.sha256(f"{digest}:{' '.join(words)}".encode()).digest()
    signature = base64.b64encode(seal * 3).decode()
    return {"type": "thinking", "thinking": text, "signature": signature}, len(words)


def _seed(params: Any) -> int:
    """What varies a structured answer: the prompt's hash, as for the words."""
    return zlib.crc32(last_user_text(params.messages).encode())


def _json_answer(params: Any, schema: dict[str, Any]) -> tuple[str, str, None, int]:
    """(text, stop_reason, stop_sequence, output_tokens) of an answer in JSON valid
    for ``schema``; ``max_tokens`` cuts it short (``stop_reason`` ``max_tokens``), as
    the service's answer would be."""
    text = _encoder.encode(instance(schema, _seed(params))).decode()
    output = len(text) // 4 + 1
    if output > params.max_tokens:
        return text[: params.max_tokens * 4], "max_tokens", None, params.max_tokens
    return text, "end_turn", None, output


def respond(
    params: Any, raw: bytes, *, service_tier: str = "batch", cached: CacheUsage | None = None
) -> Message:
    """The model's answer to ``params`` (a ``MessageCreateParams``); ``raw`` is the
    encoded params, hashed into the message id. ``cached``: the part of the input the
    prompt cache read and wrote (``PromptCache.usage``), else none of it."""
    digest = _digest(raw)
    input_tokens = count_input_tokens(params.messages, params.system, params.tools)
    tool = _forced_tool(params)
    content: list[dict[str, Any]]
    stop_sequence: str | None
    thinking, thought = _thinking(params, digest)
    room = params.max_tokens - thought  # what the thinking left of max_tokens
    if tool is not None:
        given = tool.input_schema
        value = instance(given if given is not msgspec.UNSET else {}, _seed(params))
        block = {"type": "tool_use", "id": f"toolu_{digest}", "name": tool.name, "input": value}
        content = [block]
        output = min(room, len(_encoder.encode(value)) // 4 + 8)
        stop_reason, stop_sequence = "tool_use", None
    elif room < 1:  # max_tokens ran out while thinking
        content, stop_reason, stop_sequence, output = [], "max_tokens", None, 0
    else:
        answering = msgspec.structs.replace(params, max_tokens=room) if thought else params
        wanted = output_schema(params)
        if wanted is not None:
            text, stop_reason, stop_sequence, output = _json_answer(answering, wanted)
        else:
            text, stop_reason, stop_sequence, output = _text_answer(answering)
        content = [{"type": "text", "text": text, "citations": None}]
    if thinking is not None:
        content.insert(0, thinking)
        output += thought
    usage = Usage(input_tokens, output, 0, 0, service_tier)  # type: ignore[arg-type]
    if cached is not None:
        written = cached.written_5m + cached.written_1h
        usage.input_tokens = max(0, input_tokens - cached.read - written)
        usage.cache_read_input_tokens = cached.read
        usage.cache_creation_input_tokens = written
        usage.cache_creation = CacheCreation(cached.written_1h, cached.written_5m)
    return Message(
        id=f"msg_{digest}",
        model=params.model,
        content=content,
        stop_reason=stop_reason,
        stop_sequence=stop_sequence,
        usage=usage,
    )


#: A succeeded results line of a text answer, as msgspec encodes
#: ``ResultLine(custom_id, SucceededResult(respond(params, raw)))``: custom_id, message
#: id, model (JSON), text, stop_reason, stop_sequence (JSON), input and output tokens.
_TEXT_LINE = (
    b'{"custom_id":"%s","result":{"type":"succeeded","message":{"id":"msg_%s",'
    b'"type":"message","role":"assistant","model":%s,"content":[{"type":"text","text":"%s",'
    b'"citations":null}],"stop_reason":"%s","stop_sequence":%s,"usage":{"input_tokens":%d,'
    b'"output_tokens":%d,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,'
    b'"service_tier":"batch"}}}}\n'
)
_models_json: dict[str, bytes] = {}


def _json_model(model: str) -> bytes:
    encoded = _models_json.get(model)
    if encoded is None:
        encoded = _encoder.encode(model)
        if len(_models_json) < 256:  # the few model names in use, not every typo
            _models_json[model] = encoded
    return encoded


def result_line(custom_id: str, params: Any, raw: bytes) -> bytes | None:
    """The results line (newline included) of a text answer, built without the
    intermediate ``Message``; None when the answer is a tool call or opens with
    thinking (use ``respond``).

    Byte for byte what ``ResultLine(custom_id, SucceededResult(respond(params, raw)))``
    encodes to (a test holds it to that); it is the same computation inlined, since it
    runs once per request of every batch. ``custom_id`` must be one the create checked
    (``[a-zA-Z0-9_-]``: nothing to escape), and the text is made of the plain ASCII
    words of ``_WORDS``, which JSON leaves as they are.
    """
    unset = _UNSET
    if params.tool_choice is not unset and _forced_tool(params) is not None:
        return None
    if params.thinking is not unset and isinstance(params.thinking, _THINKING_ON):
        return None
    if params.output_config is not unset or params.output_format is not unset:
        return None
    # Counted first: encoding the messages caches their UTF-8 form, which the prompt's
    # hash then reuses.
    messages = params.messages
    size = len(_encoder.encode(messages))
    if params.system is not unset:
        size += len(_encoder.encode(params.system))
    if params.tools is not unset:
        size += len(_encoder.encode(params.tools))
    words = reply_text(last_user_text(messages))
    stop_reason = b"end_turn"
    if params.max_tokens < len(words):
        words, stop_reason = words[: params.max_tokens], b"max_tokens"
    text = " ".join(words)
    output = len(words) or 1
    stop_sequence = b"null"
    if params.stop_sequences is not unset:
        text, stop = _stop(text, params.stop_sequences)
        if stop is not None:
            stop_reason, stop_sequence = b"stop_sequence", _encoder.encode(stop)
            output = len(text.split()) or 1
    model = _models_json.get(params.model) or _json_model(params.model)
    return _TEXT_LINE % (
        custom_id.encode(),
        _digest(raw).encode(),
        model,
        text.encode(),
        stop_reason,
        stop_sequence,
        size // 4 + 1,
        output,
    )
