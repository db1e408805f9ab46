"""The Messages create schema as the service enforces it, shared by the pipeline's
validate stage and the emulator (so a request that passes here does not come back
``invalid_request_error`` from a batch).

Decoding into the strict wire Structs does the type, range and unknown-field checks
in C; the few cross-field rules left are checked on the decoded Structs.
Every failure message names the field path and the rule, e.g.
``params.messages[2].content[0].type: unknown block type "imagee"``.
"""

from __future__ import annotations

import re

import msgspec

from ._types import BatchRequest, MessageCreateParams

__all__ = (
    "DEFAULT_MODELS",
    "Checked",
    "SchemaError",
    "check_entry",
    "check_params",
    "decode_error_message",
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


class Checked(msgspec.Struct):
    """A request that passed every local check."""

    custom_id: str
    model: str
    max_tokens: int
    signature: str
    approx_input_tokens: int


class SchemaError(msgspec.Struct):
    """Why a request cannot be sent; ``custom_id`` when it could be read."""

    custom_id: str | None
    message: str


_entry_decoder = msgspec.json.Decoder(BatchRequest)
_PATH = re.compile(r" - at `\$\.?(.*)`$")
_INVALID_TAG = re.compile(r"^Invalid value '(.*)'$")


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
    if tag and path.endswith(".type"):
        text = f'unknown {_tag_kind(path)} type "{tag.group(1)}"'
    elif text.startswith("Object contains unknown field"):
        text = "unknown field " + text.removeprefix("Object contains unknown field ")
    elif text and not text[:2].isupper():
        text = text[0].lower() + text[1:]
    full = f"{prefix}{path}" if path else prefix.rstrip(".")
    return f"{full}: {text}" if full else text


def _tag_kind(path: str) -> str:
    if ".content[" in path:
        return "block"
    if path.endswith("tool_choice.type"):
        return "tool_choice"
    if path.endswith("source.type"):
        return "source"
    if path.endswith("thinking.type"):
        return "thinking"
    return "object"


def check_entry(
    raw: bytes, *, models: frozenset[str] | None = DEFAULT_MODELS
) -> Checked | SchemaError:
    """Decode and check one batch entry ``{"custom_id": ..., "params": {...}}``."""
    try:
        entry = _entry_decoder.decode(raw)
    except msgspec.DecodeError as exc:
        return SchemaError(_salvage_custom_id(raw), decode_error_message(exc))
    problem = check_params(entry.params, models=models)
    if problem is not None:
        return SchemaError(entry.custom_id, "params." + problem)
    return Checked(
        entry.custom_id,
        entry.params.model,
        entry.params.max_tokens,
        signature(entry.params),
        approx_input_tokens(raw),
    )


def check_params(
    params: MessageCreateParams, *, models: frozenset[str] | None = DEFAULT_MODELS
) -> str | None:
    """The cross-field rules; a message ``field.path: rule`` or None when valid."""
    if models is not None and params.model not in models:
        return f'model: unknown model "{params.model}"'
    if not params.messages:
        return "messages: must hold at least one message"
    if params.stream is True:
        return "stream: streaming is not supported in batches"
    return None


def signature(params: MessageCreateParams) -> str:
    """The dry-run shape key: model, top-level params, tool names, block kinds."""
    kinds: set[str] = set()
    for message in params.messages:
        if isinstance(message.content, str):
            kinds.add("str")
        else:
            kinds.update(type(block).__name__ for block in message.content)
    fields = [f for f in params.__struct_fields__ if getattr(params, f) is not msgspec.UNSET]
    tools = sorted(t.name for t in params.tools) if params.tools else []
    return "|".join((params.model, ",".join(fields), ",".join(tools), ",".join(sorted(kinds))))


def approx_input_tokens(raw: bytes) -> int:
    """A documented over-approximation of input tokens: one per 3 bytes of request."""
    return len(raw) // 3 + 1


def _salvage_custom_id(raw: bytes) -> str | None:
    try:
        value = msgspec.json.decode(raw, type=dict[str, object])
    except msgspec.DecodeError:
        return None
    cid = value.get("custom_id")
    return cid if isinstance(cid, str) else None
