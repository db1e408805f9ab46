"""The strict check of a Messages create request, the authority behind
``pipeline.api._schema.check_entry``: the full decode into the wire Structs and the
cross-field rules, with the exact reason of every failure. ``_schema`` puts a fast path
for the common shapes in front of it and re-exports the public names from here.

Decoding into the strict wire Structs does the type, range, tag and unknown-field
checks in C; the cross-field rules left (roles of tool blocks, tool_choice against
tools, thinking against max_tokens, ...) are cheap attribute checks on the decoded
Structs, done in one pass over the messages. Every failure names the field path and
the rule, e.g. ``params.messages[2].content[0].type: unknown block type "imagee"``.

Rules checked beyond the Struct types (each one is a rule of the real service):

* the line nests arrays and objects at most ``MAX_JSON_DEPTH`` levels deep (checked
  before any decode, which would otherwise recurse into a deeper line);
* ``model`` is one the deployment knows; ``max_tokens`` within the model's output cap,
  and within a signed 32-bit integer (``MAX_TOKENS_LIMIT``) for a model without one;
* ``messages`` non-empty; every message has content (the final assistant message may be
  empty); text blocks hold non-whitespace text; a final assistant message does not end
  in whitespace;
* ``tool_use`` blocks only in assistant messages, ``tool_result`` blocks only in user
  messages, each answering a ``tool_use`` id of the message just before, and every
  ``tool_use`` answered by the next message, which starts with its ``tool_result`` blocks;
* image sources are images, base64 documents are PDFs;
* custom tools have a valid name, an object ``input_schema`` and only the fields of
  the SDK's ``ToolParam`` (a misspelt ``descripton`` is refused, as on every other
  request object); server tools have a versioned ``type``; tool names are unique;
* ``tool_choice`` ``any``/``tool`` need tools, ``tool`` names a defined tool;
* ``stop_sequences`` hold non-whitespace text; ``stream: true`` is refused;
* prompt caching: at most 4 ``cache_control`` breakpoints in all, over the tool
  definitions, the ``system`` blocks and the content blocks of the messages (an explicit
  ``null`` is no breakpoint), and no ``ttl: "1h"`` breakpoint after a 5-minute one (an
  absent ``ttl`` is 5 minutes) in the order the service reads them: tools, system,
  messages;
* structured outputs: ``output_config.format`` (or ``output_format``) holds a JSON schema
  of the subset the service takes (``_json_schema``), as does a ``strict: true`` tool's
  ``input_schema``;
* extended thinking: ``budget_tokens < max_tokens``, no forced tool use, temperature
  only 1, no ``top_k``, ``top_p`` within 0.95..1.
"""

from __future__ import annotations

import itertools
import re
from typing import TYPE_CHECKING, Any, Protocol, get_args

import msgspec
from msgspec import UNSET, UnsetType

from ._json_schema import check_output_format, check_schema
from ._types import (
    Base64ImageSource,
    BatchRequest,
    ContentBlockParam,
    DocumentBlockParam,
    ImageBlockParam,
    MessageCreateParams,
    TextBlockParam,
    ThinkingEnabled,
    Tool,
    ToolChoiceAny,
    ToolChoiceTool,
    ToolResultBlockParam,
    ToolUseBlockParam,
)

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from ._types import MessageParam, ToolChoice

__all__ = (
    "DEFAULT_MODELS",
    "IMAGE_TOKENS",
    "KNOWN_MODELS",
    "MAX_JSON_DEPTH",
    "MAX_TOKENS_LIMIT",
    "MODEL_MAX_OUTPUT_TOKENS",
    "TOO_DEEP",
    "Checked",
    "SchemaError",
    "approx_input_tokens",
    "check_params",
    "decode_error_message",
    "json_depth",
    "leading_custom_id",
    "too_deep",
    "reshaped",
    "signature",
    "signature_tools",
    "without_fields",
)


#: Models the documented Batches API supports; deployments may know more.
DEFAULT_MODELS: frozenset[str] = frozenset(
    {
        "claude-3-5-sonnet-20240620",
        "claude-3-5-sonnet-20241022",
        "claude-3-5-haiku-20241022",
        "claude-3-haiku-20240307",
        "claude-3-opus-20240229",
    }
)

#: Every model id the service is known to accept: the documented batch models, and the
#: later ids and aliases Anthropic's docs name (the models overview and each model's
#: page, as of 2026-11), and every name of the SDK's ``Model`` literal (2.17; a test
#: fails when the installed SDK names one this set lacks). The emulator accepts these by default, so a job written for
#: today's models runs on it while a misspelt name is still refused; the local check
#: accepts any name unless told otherwise (``PipelineConfig.models``).
KNOWN_MODELS: frozenset[str] = DEFAULT_MODELS | frozenset(
    {
        "claude-3-5-haiku-latest",
        "claude-3-7-sonnet-20250219",
        "claude-3-7-sonnet-latest",
        "claude-sonnet-4-20250514",
        "claude-sonnet-4-0",
        "claude-opus-4-20250514",
        "claude-opus-4-0",
        "claude-opus-4-1-20250805",
        "claude-opus-4-1",
        "claude-sonnet-4-5-20250929",
        "claude-sonnet-4-5",
        "claude-haiku-4-5-20251001",
        "claude-haiku-4-5",
        "claude-opus-4-5-20251101",
        "claude-opus-4-5",
        "claude-sonnet-4-6",
        "claude-opus-4-6",
        "claude-opus-4-7",
        "claude-opus-4-8",
        "claude-sonnet-5",
        "claude-opus-5",
        "claude-fable-5",
        "claude-mythos-5",
        "claude-sonnet-5-5",
        "claude-opus-5-5",
        "claude-haiku-5-5",
        "claude-fable-5-1",
        "claude-mythos-5-1",
        "claude-mythos-preview",
        "claude-fable-5-2",
        "claude-mythos-5-2",
    }
)

#: The largest ``max_tokens`` each model accepts; models not listed are not capped here.
MODEL_MAX_OUTPUT_TOKENS: Mapping[str, int] = {
    "claude-3-5-sonnet-20240620": 8192,
    "claude-3-5-sonnet-20241022": 8192,
    "claude-3-5-haiku-20241022": 8192,
    "claude-3-haiku-20240307": 4096,
    "claude-3-opus-20240229": 4096,
}

#: The largest ``max_tokens`` of a model whose own cap is not in
#: ``MODEL_MAX_OUTPUT_TOKENS``: the API's integers are signed 32-bit ones, and the
#: service refuses a larger value (so does this check, before any cost is estimated
#: from it).
MAX_TOKENS_LIMIT = 2**31 - 1

#: The deepest nesting of JSON arrays and objects a request line may have (the line's
#: own object is level 1). The service refuses deeply nested bodies (2,000 levels:
#: seen) and answers a batch create that holds such a request with a 400 for the
#: whole batch; its exact limit is not documented. Common server-side JSON parsers
#: stop at 128 (serde_json) to 200 (pydantic's jiter) levels per body, and a batch body
#: adds 2 levels around each request, so a line deeper than 100 levels is refused here,
#: as ``invalid_json``, before anything decodes it (a decode recurses once per level:
#: Python's recursion limit, 1,000 frames by default, would end the job). No real
#: request comes near: a tool schema 20 levels deep is rare.
MAX_JSON_DEPTH = 100
#: How the message of a line nested deeper than ``MAX_JSON_DEPTH`` starts.
TOO_DEEP = "not valid JSON: arrays and objects nested"

#: Input tokens counted per base64 image by ``approx_input_tokens`` (the service's
#: cost of an image of ~1.15 megapixels, the largest it keeps unscaled).
IMAGE_TOKENS = 1600


class Checked(msgspec.Struct, gc=False):
    """A request that passed every local check."""

    custom_id: str
    model: str
    max_tokens: int
    signature: str
    approx_input_tokens: int
    #: it sets a ``cache_control`` somewhere: its input may be written to the prompt
    #: cache, which costs more than plain input (``_pricing.cache_write_factor``)
    cache_control: bool = False


class SchemaError(msgspec.Struct):
    """Why a request cannot be sent; ``custom_id`` when it could be read."""

    custom_id: str | None
    message: str


class _Tally(msgspec.Struct, gc=False):
    """What the pass over the message blocks counts on its way."""

    images: int = 0  # base64 images
    image_bytes: int = 0  # their base64 data
    breakpoints: int = 0  # blocks with a cache_control


_entry_decoder = msgspec.json.Decoder(BatchRequest)
_PATH = re.compile(r" - at `\$\.?(.*)`$")
_INVALID_TAG = re.compile(r"^Invalid value '(.*)'$")
_TOOL_NAME = re.compile(r"^[a-zA-Z0-9_-]{1,128}$")
#: Server tools carry a dated type, e.g. ``web_search_20250305``.
_SERVER_TOOL_TYPE = re.compile(r"^[a-z][a-z0-9_]*_[0-9]{8}$")
_IMAGE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})
_FINAL_ASSISTANT_EMPTY_OK = (
    "all messages must have non-empty content except for the optional final assistant message"
)


def decode_error_message(exc: msgspec.DecodeError, prefix: str = "") -> str:
    """Turn msgspec's ``Expected `int` >= 1 - at `$.params.max_tokens``` into
    ``params.max_tokens: expected `int` >= 1``."""
    text = str(exc)
    match = _PATH.search(text)
    path = ""
    if match:
        path = match.group(1)
        text = text[: match.start()]
    tag = _INVALID_TAG.match(text)
    if text.startswith(("Input data was truncated", "JSON is malformed", "Invalid UTF-8")):
        text = "not valid JSON: " + text[0].lower() + text[1:]
    elif tag and path.endswith(".type"):
        text = f'unknown {_tag_kind(path)} type "{tag.group(1)}"'
    elif text.startswith("Object contains unknown field"):
        text = "unknown field " + text.removeprefix("Object contains unknown field ")
    elif text and not text[:2].isupper():
        text = text[0].lower() + text[1:]
    full = f"{prefix}{path}" if path else prefix.rstrip(".")
    return f"{full}: {text}" if full else text


def _tag_kind(path: str) -> str:
    if path.endswith("source.type"):
        return "source"
    if ".content[" in path:
        return "block"
    if path.endswith("tool_choice.type"):
        return "tool_choice"
    if path.endswith("thinking.type"):
        return "thinking"
    return "object"


def _check_entry_full(
    raw: bytes, models: frozenset[str] | None, max_output_tokens: Mapping[str, int]
) -> Checked | SchemaError:
    """``check_entry`` through the full strict decode: every shape, exact reasons."""
    deep = too_deep(raw)
    if deep is not None:
        return deep
    try:
        entry = _entry_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        return SchemaError(_salvage_custom_id(raw), decode_error_message(exc))
    except RecursionError:  # not deeper than MAX_JSON_DEPTH: a stack already this deep
        return _deep(raw, json_depth(raw))
    except UnicodeDecodeError as exc:  # msgspec < 0.23 lets a string's bad UTF-8 through
        return SchemaError(_salvage_custom_id(raw), f"not valid JSON: invalid UTF-8: {exc}")
    params = entry.params
    kinds: set[type] = set()
    tally = _Tally()
    problem = _check(params, models, max_output_tokens, kinds, tally)
    if problem is None and params.tools:
        problem = _custom_tool_fields(_tools_view.decode(raw).params.tools, params.tools)
    if problem is not None:
        return SchemaError(entry.custom_id, "params." + problem)
    return Checked(
        entry.custom_id,
        params.model,
        params.max_tokens,
        _signature(params, kinds),
        approx_input_tokens(raw, images=tally.images, image_bytes=tally.image_bytes),
        b'"cache_control"' in raw,
    )


def check_params(
    params: MessageCreateParams,
    *,
    models: frozenset[str] | None = DEFAULT_MODELS,
    max_output_tokens: Mapping[str, int] = MODEL_MAX_OUTPUT_TOKENS,
    raw: bytes | msgspec.Raw | None = None,
) -> str | None:
    """The cross-field rules on decoded params: ``field.path: rule``, or None when valid.

    The path is relative to ``params`` (``check_entry`` prefixes ``params.``). ``raw``:
    the JSON object the params were decoded from, which the custom tools' own fields
    are checked on (a decoded ``Tool`` has dropped a misspelt ``descripton``).
    """
    problem = _check(params, models, max_output_tokens, set(), _Tally())
    if problem is None and raw is not None and params.tools:
        problem = _custom_tool_fields(_params_tools_view.decode(raw).tools, params.tools)
    return problem


def _check(
    params: MessageCreateParams,
    models: frozenset[str] | None,
    max_output_tokens: Mapping[str, int],
    kinds: set[type],
    tally: _Tally,
) -> str | None:
    # The common request sets few optional fields: each rule below is one attribute
    # test unless its field is present.
    model = params.model
    if models is not None and model not in models:
        return f'model: unknown model "{model}"'
    cap = max_output_tokens.get(model)
    if cap is not None and params.max_tokens > cap:
        return f"max_tokens: {params.max_tokens} > {cap}, the maximum for {model}"
    if params.max_tokens > MAX_TOKENS_LIMIT:
        return (
            f"max_tokens: {params.max_tokens} > {MAX_TOKENS_LIMIT}, the largest the service "
            "accepts (a signed 32-bit integer; each model's own cap is lower)"
        )
    if params.stream is True:
        return "stream: streaming is not supported in batches (must be false or absent)"
    if not params.messages:
        return "messages: must hold at least one message"
    problem = _check_messages(params.messages, kinds, tally)
    if problem is not None:
        return problem
    system = params.system
    if isinstance(system, list):
        for i, block in enumerate(system):
            if not block.text or block.text.isspace():
                return f"system[{i}].text: text content blocks must contain non-whitespace text"
    if params.tools is not UNSET or params.tool_choice is not UNSET:
        problem = _check_tools(params)
        if problem is not None:
            return problem
    # The pass over the messages counted the breakpoints there; with none, and no tools
    # or system blocks to hold one, there is nothing to walk.
    if tally.breakpoints or params.tools or type(system) is list:
        problem = _check_cache_control(params.tools or (), system, params.messages)
        if problem is not None:
            return problem
    if params.output_config is not UNSET or params.output_format is not UNSET:
        problem = check_output_format(params)
        if problem is not None:
            return problem
    if params.stop_sequences is not UNSET:
        for i, stop in enumerate(params.stop_sequences):
            if not stop or stop.isspace():
                return f"stop_sequences[{i}]: each stop sequence must contain non-whitespace text"
    if type(params.thinking) is ThinkingEnabled:
        return _check_thinking(params, params.thinking)
    return None


def _check_messages(messages: list[MessageParam], kinds: set[type], tally: _Tally) -> str | None:
    """Blocks, roles and tool_use/tool_result pairing, in one pass over the messages."""
    last = len(messages) - 1
    open_uses: set[str] | None = None  # tool_use ids of the message before
    for i, message in enumerate(messages):
        content = message.content
        if not content and not (i == last and message.role == "assistant"):
            return f"messages[{i}].content: {_FINAL_ASSISTANT_EMPTY_OK}"
        if isinstance(content, str):
            kinds.add(str)
            answered: set[str] | None = None
            uses: set[str] | None = None
        else:
            problem, answered, uses = _check_blocks(
                i, message.role, content, open_uses, kinds, tally
            )
            if problem is not None:
                return problem
        if open_uses and (answered is None or not open_uses <= answered):
            missing = ", ".join(sorted(open_uses - (answered or set())))
            return (
                f"messages[{i}].content: tool_use ids of messages[{i - 1}] have no "
                f"tool_result block in the next message: {missing}"
            )
        open_uses = uses
    final = messages[last]
    if final.role == "assistant" and _ends_in_whitespace(final.content):
        return (
            f"messages[{last}].content: final assistant content cannot end with trailing whitespace"
        )
    return None


def _check_blocks(
    i: int,
    role: str,
    content: list[ContentBlockParam],
    open_uses: set[str] | None,
    kinds: set[type],
    tally: _Tally,
) -> tuple[str | None, set[str] | None, set[str] | None]:
    """One message's blocks: (error or None, tool_use ids answered, tool_use ids opened)."""
    answered: set[str] | None = None
    uses: set[str] | None = None
    leading = True  # every block so far is a tool_result
    for j, block in enumerate(content):
        kind = type(block)
        kinds.add(kind)
        if kind is not ToolResultBlockParam:
            leading = False
        if getattr(block, "cache_control", None):  # thinking and server blocks have none
            tally.breakpoints += 1
        if type(block) is TextBlockParam:
            text = block.text
            if not text or text.isspace():
                return _blk(i, j, "text: text content blocks must contain non-whitespace text")
        elif type(block) is ToolUseBlockParam:
            if role != "assistant":
                return _blk(i, j, "type: tool_use blocks are only allowed in assistant messages")
            uses = uses or set()
            uses.add(block.id)
        elif type(block) is ToolResultBlockParam:
            if role != "user":
                return _blk(i, j, "type: tool_result blocks are only allowed in user messages")
            use_id: str = block.tool_use_id
            if open_uses is None or use_id not in open_uses:
                return _blk(
                    i,
                    j,
                    f'tool_use_id: "{use_id}" answers no tool_use block of the previous message',
                )
            if not leading:
                return _blk(i, j, f"type: {_RESULTS_FIRST.format(len(open_uses))}")
            answered = answered or set()
            answered.add(use_id)
        elif type(block) is ImageBlockParam or type(block) is DocumentBlockParam:
            problem = _check_source(i, j, block, tally)
            if problem is not None:
                return problem, None, None
    return None, answered, uses


#: the service's words when a message answering tool_use blocks does not start with
#: its tool_result blocks
_RESULTS_FIRST = (
    "Did not find {} `tool_result` block(s) at the beginning of this message. Messages "
    "following `tool_use` blocks must begin with a matching number of `tool_result` blocks."
)


def _blk(i: int, j: int, rule: str) -> tuple[str, None, None]:
    return f"messages[{i}].content[{j}].{rule}", None, None


def _check_source(
    i: int, j: int, block: ImageBlockParam | DocumentBlockParam, tally: _Tally
) -> str | None:
    source = block.source
    if type(source) is not Base64ImageSource:
        return None
    if type(block) is ImageBlockParam:
        if source.media_type not in _IMAGE_TYPES:
            return (
                f'messages[{i}].content[{j}].source.media_type: "{source.media_type}" is not '
                "an image type (image/jpeg, image/png, image/gif, image/webp)"
            )
        tally.images += 1
        tally.image_bytes += len(source.data)
    elif source.media_type != "application/pdf":
        return (
            f"messages[{i}].content[{j}].source.media_type: base64 documents must be "
            f'"application/pdf", got "{source.media_type}"'
        )
    return None


def _ends_in_whitespace(content: object) -> bool:
    if type(content) is str:
        return bool(content) and content[-1].isspace()
    if isinstance(content, list) and content and type(content[-1]) is TextBlockParam:
        text = content[-1].text
        return bool(text) and text[-1].isspace()
    return False


def _check_tools(params: MessageCreateParams) -> str | None:
    return _check_tool_list(params.tools if params.tools is not UNSET else [], params.tool_choice)


def _check_tool_list(tools: list[Tool], choice: ToolChoice | UnsetType) -> str | None:
    names: set[str] = set()
    for i, tool in enumerate(tools):
        problem = _check_tool(i, tool)
        if problem is not None:
            return problem
        if tool.name in names:
            return f'tools[{i}].name: tool names must be unique, "{tool.name}" is defined twice'
        names.add(tool.name)
    if type(choice) is ToolChoiceAny or type(choice) is ToolChoiceTool:
        if not tools:
            kind = "any" if type(choice) is ToolChoiceAny else "tool"
            return f'tool_choice: type "{kind}" requires tools'
        if type(choice) is ToolChoiceTool and choice.name not in names:
            return f'tool_choice.name: no tool named "{choice.name}" in tools'
    return None


def _check_tool(i: int, tool: Tool) -> str | None:
    kind = tool.type
    if kind is UNSET or kind is None or kind == "custom":
        if not _TOOL_NAME.match(tool.name):
            return f"tools[{i}].name: must match ^[a-zA-Z0-9_-]{{1,128}}$, got {tool.name!r}"
        if tool.input_schema is UNSET:
            return f"tools[{i}].input_schema: required for custom tools"
        if tool.input_schema.get("type") != "object":
            return f'tools[{i}].input_schema.type: must be "object"'
        return None
    if not _SERVER_TOOL_TYPE.match(kind):
        return f'tools[{i}].type: unknown tool type "{kind}" (custom tools leave it out)'
    return None


#: The fields of a custom tool: the keys of the SDK's ``ToolParam`` (``BetaToolParam``
#: has the same). ``Tool`` lets unknown fields through, for server tools, so a custom
#: tool's are checked on its raw JSON.
_CUSTOM_TOOL_FIELDS = frozenset(
    {
        "name",
        "input_schema",
        "type",
        "description",
        "cache_control",
        "allowed_callers",
        "defer_loading",
        "eager_input_streaming",
        "input_examples",
        "strict",
    }
)


class _ToolsOnlyParams(msgspec.Struct, gc=False):
    tools: msgspec.Raw = msgspec.Raw()


class _ToolsOnlyEntry(msgspec.Struct, gc=False):
    """The raw ``params.tools`` of an entry, every other field skipped."""

    params: _ToolsOnlyParams


_tools_view = msgspec.json.Decoder(_ToolsOnlyEntry)
_params_tools_view = msgspec.json.Decoder(_ToolsOnlyParams)
_tool_fields_decoder = msgspec.json.Decoder(list[dict[str, msgspec.Raw]])


def _custom_tool_fields(raw_tools: bytes | msgspec.Raw, tools: list[Tool]) -> str | None:
    """``tools[i]: unknown field `x``` for the first custom tool with a field its type
    does not define (``raw_tools`` is the JSON ``tools`` was decoded from); and for a
    ``strict: true`` tool, what structured outputs refuse in its ``input_schema``."""
    for i, (fields, tool) in enumerate(
        zip(_tool_fields_decoder.decode(raw_tools), tools, strict=True)
    ):
        if tool.type is UNSET or tool.type is None or tool.type == "custom":
            for name in fields:
                if name not in _CUSTOM_TOOL_FIELDS:
                    return f"tools[{i}]: unknown field `{name}`"
            strict = fields.get("strict")
            if strict is not None and bytes(strict) == b"true":
                problem = check_schema(tool.input_schema, f"tools[{i}].input_schema")
                if problem is not None:
                    return problem
    return None


#: The most ``cache_control`` breakpoints a request may carry, all places together.
_MAX_BREAKPOINTS = 4
_TTL_ORDER = (
    "a ttl='1h' cache_control block must not come after a ttl='5m' cache_control block. "
    "Note that blocks are processed in the following order: `tools`, `system`, `messages`."
)


class _Message(Protocol):
    """What ``_check_cache_control`` reads of a message (``MessageParam`` or the fast
    path's text-only message)."""

    @property
    def content(self) -> str | Sequence[object]: ...


def _check_cache_control(
    tools: Sequence[Tool],
    system: str | Sequence[TextBlockParam] | UnsetType,
    messages: Sequence[_Message],
) -> str | None:
    """The service's limits on prompt-caching breakpoints: at most ``_MAX_BREAKPOINTS``,
    and the 1-hour ones before the 5-minute ones, read in the order tools, system,
    messages. The path names the breakpoint that breaks the rule.

    ``check_entry``'s fast path calls it too (on its own Structs), so both paths agree.
    """
    # (where, index, block index, CacheControl) in the service's order; the path is
    # only spelt out for the breakpoint that breaks a rule
    marks: list[tuple[str, int, int, Any]] = []
    for i, tool in enumerate(tools):
        if tool.cache_control:
            marks.append(("tools", i, 0, tool.cache_control))
    if type(system) is list:
        for i, block in enumerate(system):
            if block.cache_control:
                marks.append(("system", i, 0, block.cache_control))
    for i, message in enumerate(messages):
        content = message.content
        if type(content) is not str:
            for j, block in enumerate(content):
                # every block type but thinking and server blocks has the field
                control = getattr(block, "cache_control", None)
                if control:
                    marks.append(("messages", i, j, control))
    if len(marks) > _MAX_BREAKPOINTS:
        return (
            f"{_mark_path(marks[_MAX_BREAKPOINTS])}.cache_control: A maximum of "
            f"{_MAX_BREAKPOINTS} blocks with cache_control may be provided. Found {len(marks)}."
        )
    short = False  # a 5-minute breakpoint came before
    for mark in marks:
        if mark[3].ttl != "1h":
            short = True
        elif short:
            return f"{_mark_path(mark)}.cache_control.ttl: {_TTL_ORDER}"
    return None


def _mark_path(mark: tuple[str, int, int, object]) -> str:
    where, i, j, _ = mark
    return f"messages[{i}].content[{j}]" if where == "messages" else f"{where}[{i}]"


def _check_thinking(params: MessageCreateParams, thinking: ThinkingEnabled) -> str | None:
    if thinking.budget_tokens >= params.max_tokens:
        return (
            f"thinking.budget_tokens: must be less than max_tokens "
            f"({thinking.budget_tokens} >= {params.max_tokens})"
        )
    choice = params.tool_choice
    if type(choice) is ToolChoiceAny or type(choice) is ToolChoiceTool:
        return "tool_choice: thinking may not be enabled when tool_choice forces tool use"
    if params.temperature is not UNSET and params.temperature != 1:
        return "temperature: may only be set to 1 when thinking is enabled"
    if params.top_k is not UNSET:
        return "top_k: may not be set when thinking is enabled"
    if params.top_p is not UNSET and params.top_p < 0.95:
        return "top_p: must be between 0.95 and 1 when thinking is enabled"
    return None


# ------------------------------------------------------------------------ signature

_FIELD_NAMES = MessageCreateParams.__struct_fields__
_TAGS: dict[type, str] = {str: "str"}
_TAGS.update((cls, str(cls.__struct_config__.tag)) for cls in get_args(ContentBlockParam))
_SIGNATURES: dict[tuple[object, ...], str] = {}
_MAX_SIGNATURES = 65_536


def signature(params: MessageCreateParams) -> str:
    """The dry-run shape key: model, the top-level params present (so whether a system
    prompt is), the tool names and the content block kinds of the messages.

    Requests with one signature are expected to pass or fail the service's checks
    together, so the dry run samples a few of each.
    """
    kinds: set[type] = set()
    for message in params.messages:
        if type(message.content) is str:
            kinds.add(str)
        else:
            kinds.update(map(type, message.content))
    return _signature(params, kinds)


def _signature(params: MessageCreateParams, kinds: set[type]) -> str:
    # The cache key holds the type of every field (UnsetType when absent): cheaper
    # to build than a presence mask, and as fine a partition.
    values = msgspec.structs.astuple(params)
    tools = tuple(sorted([t.name for t in params.tools])) if params.tools else ()
    key = (params.model, tuple(map(type, values)), tools, frozenset(kinds))
    found = _SIGNATURES.get(key)
    if found is None:
        fields = ",".join(f for f, v in zip(_FIELD_NAMES, values, strict=True) if v is not UNSET)
        tags = sorted(_TAGS.get(k, k.__name__) for k in kinds)
        found = "|".join((params.model, fields, ",".join(tools), ",".join(tags)))
        if len(_SIGNATURES) >= _MAX_SIGNATURES:
            _SIGNATURES.clear()
        _SIGNATURES[key] = found
    return found


def reshaped(signature: str, *, fields: Sequence[str] = (), tools: str | None = None) -> str:
    """A shape key (``signature``: model|params|tool names|block kinds) with ``fields``
    added to its params, or its tool names replaced by ``tools``."""
    parts = signature.rsplit("|", 2)
    if len(parts) != 3:
        return signature
    head, names, kinds = parts
    if fields:
        head = ",".join((head, *fields))
    return "|".join((head, names if tools is None else tools, kinds))


def signature_tools(signature: str) -> str:
    """The tool names of a shape key (``signature``), comma-separated; "" for none."""
    parts = signature.rsplit("|", 2)
    return parts[1] if len(parts) == 3 else ""


def approx_input_tokens(raw: bytes, *, images: int = 0, image_bytes: int = 0) -> int:
    """A documented over-approximation of a request's input tokens, used until a dry
    run measures them: one token per 3 bytes of the encoded request (English runs at
    about 4 bytes a token), except base64 images, which count ``IMAGE_TOKENS`` each
    instead of their bytes."""
    return (len(raw) - image_bytes) // 3 + 1 + images * IMAGE_TOKENS


_object_decoder = msgspec.json.Decoder(dict[str, object])
_object_encoder = msgspec.json.Encoder()


def without_fields(
    text: bytes, fields: frozenset[str], *, inside: str | None = None
) -> tuple[bytes, list[str]]:
    """The JSON object ``text`` without the top-level ``fields`` it has (those of its
    member ``inside``, when given), and the names taken out, sorted; ``text`` itself
    and none when there are none. For fields the service added after this version
    (``allow_fields``): the strict checks then see the request without them."""
    if not fields or not any(f'"{name}"'.encode() in text for name in fields):
        return text, []
    try:
        value = _object_decoder.decode(text)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return text, []
    target = value.get(inside) if inside is not None else value
    if not isinstance(target, dict):
        return text, []
    present = sorted(fields.intersection(target))
    for name in present:
        del target[name]
    return (_object_encoder.encode(value), present) if present else (text, [])


def _salvage_custom_id(raw: bytes) -> str | None:
    """The custom_id of a line the strict decode refused, when the whole line is a
    JSON object with a string ``custom_id`` (only then: the validate stage takes a
    custom_id as proof that the line is a JSON object)."""
    try:
        value = _object_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        return None
    cid = value.get("custom_id")
    return cid if isinstance(cid, str) else None


# ------------------------------------------------------------------------ nesting

_BRACKETS = b"[]{}"
#: from this length on, a line's brackets are found one by one (``_openers_at_most``)
_LONG_LINE = 1 << 16
_NOT_BRACKETS = bytes(sorted(set(range(256)) - set(_BRACKETS)))
_NOT_MARKS = bytes(sorted(set(range(256)) - set(_BRACKETS + b'"')))
#: ``{}`` -> ``[]``: only the nesting counts, not its kind
_ONE_KIND = bytes.maketrans(b"{}", b"[]")
#: ``[`` -> +1, ``]`` -> -1 (as signed bytes)
_STEPS = bytes.maketrans(b"[]", b"\x01\xff")
#: the escapes that matter to finding where strings end: ``\\`` and ``\"``
_QUOTE_ESCAPES = re.compile(rb'\\[\\"]')
_LEADING_ID = re.compile(rb'\s*\{\s*"custom_id"\s*:\s*"([A-Za-z0-9_-]{1,64})"')


def too_deep(raw: bytes, limit: int = MAX_JSON_DEPTH) -> SchemaError | None:
    """The reject of a JSON text nested deeper than ``limit`` levels, else None.

    Safe on any input (no recursion), and cheap on the common line: one pass counts
    its brackets, and a line with ``limit`` openers or fewer cannot be deeper.
    """
    if _openers_at_most(raw, limit):
        return None
    depth = json_depth(raw, stop=limit)
    return _deep(raw, depth) if depth > limit else None


def _openers_at_most(raw: bytes, limit: int) -> bool:
    """Whether ``raw`` holds ``limit`` ``[`` and ``{`` or fewer (then it cannot nest
    deeper). A long line (a base64 image, say) has few: they are found one by one
    (``find`` is a ``memchr``), not by a pass of Python's slower byte counting."""
    if len(raw) < _LONG_LINE:
        brackets = raw.translate(None, _NOT_BRACKETS)
        return len(brackets) <= limit or brackets.count(b"[") + brackets.count(b"{") <= limit
    find, seen = raw.find, 0
    for opener in b"[{":
        at = find(opener)
        while at >= 0:
            seen += 1
            if seen > limit:
                return False
            at = find(opener, at + 1)
    return True


def _deep(raw: bytes, depth: int) -> SchemaError:
    return SchemaError(
        leading_custom_id(raw),
        f"{TOO_DEEP} {depth:,} levels deep; a request line may nest them "
        f"{MAX_JSON_DEPTH} levels at most (the service refuses deeply nested requests, "
        "with the whole batch that holds one)",
    )


def leading_custom_id(raw: bytes) -> str | None:
    """The custom_id of a line that opens with a valid one (``{"custom_id": "..."``):
    all that can be told of a line no decoder may read."""
    match = _LEADING_ID.match(raw)
    return match.group(1).decode() if match else None


def json_depth(raw: bytes, *, stop: int | None = None) -> int:
    """How deep the JSON text ``raw`` nests arrays and objects (brackets in strings do
    not count); of malformed text, how deep what is there goes. Iterative and made of
    whole-bytes operations (a few passes over the text, one per level), so any line is
    safe to measure. With ``stop``, a depth within ``stop`` may be given as any number
    up to ``stop`` (only a deeper one is exact).
    """
    if b"\\" in raw:
        raw = _QUOTE_ESCAPES.sub(b"", raw)
    marks = raw.translate(_ONE_KIND, _NOT_MARKS)
    # Strings without brackets are "" here, and removing "" pairs left to right takes
    # each such string whole: when no quote is left, no string held a bracket.
    nesting = marks.replace(b'""', b"")
    if b'"' in nesting:
        nesting = b"".join(marks.split(b'"')[::2])
    if stop is not None and b"[" * (stop + 1) in nesting:
        return _deepest(nesting)
    # Each pass takes out the innermost pairs: a balanced nesting is gone after as many
    # passes as it is deep. Told where to stop, it stops as soon as what is left is too
    # short to go past it (its depth is then not needed).
    level = 0
    while nesting and (stop is None or level <= stop):
        if stop is not None and level + len(nesting) // 2 <= stop:
            return level + len(nesting) // 2  # at most: within ``stop``
        shorter = nesting.replace(b"[]", b"")
        if len(shorter) == len(nesting):
            break  # unbalanced (malformed): measure what is left below
        nesting = shorter
        level += 1
    return level if not nesting else _deepest(nesting) + level


def _deepest(nesting: bytes) -> int:
    """The highest running level of a sequence of ``[`` and ``]``."""
    steps = memoryview(nesting.translate(_STEPS)).cast("b")
    return max(0, max(itertools.accumulate(steps), default=0))
