"""The Messages create schema as the service enforces it, shared by the pipeline's
validate stage and the emulator (so a request that passes here does not come back
``invalid_request_error`` from a batch).

The strict check (every rule, and the exact reason of each failure) is in
``_schema_full``; its public names are re-exported here. This module holds
``check_entry`` and its fast path. Most lines of a large job share a few shapes: text
messages, an optional system prompt, sampling fields, the same custom tools. For those
a decode into lean Structs (text blocks only, tools kept raw), a few attribute tests
and two cache lookups (the verdict on the tool definitions, the shape's signature)
replace the full decode and its pass over every block. The full strict decode stays
the authority: each fast test either accepts what it accepts or hands the entry over
to it, so verdict, reason and signature are the same by either path
(``tests/api/test_schema_fast.py`` holds them to that).

The fast path sits here, next to ``check_entry``, and not in a module of its own: the
strict check must not import this module (it re-exports from there), and a fast path
that returned "not accepted" to a ``check_entry`` wrapper would cost every line a
second Python call (about 3% of the check).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from ._schema_full import (
    _MAX_SIGNATURES,
    DEFAULT_MODELS,
    IMAGE_TOKENS,
    KNOWN_MODELS,
    MAX_JSON_DEPTH,
    MAX_TOKENS_LIMIT,
    MODEL_MAX_OUTPUT_TOKENS,
    TOO_DEEP,
    Checked,
    SchemaError,
    _check_cache_control,
    _check_entry_full,
    _check_tool_list,
    _custom_tool_fields,
    _ends_in_whitespace,
    approx_input_tokens,
    check_params,
    decode_error_message,
    json_depth,
    leading_custom_id,
    reshaped,
    signature,
    signature_tools,
    too_deep,
    without_fields,
)
from ._types import Metadata, Temperature, TextBlockParam, Tool, TopK, TopP

if TYPE_CHECKING:
    from collections.abc import Mapping

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
    "check_entry",
    "check_params",
    "decode_error_message",
    "json_depth",
    "leading_custom_id",
    "reshaped",
    "signature",
    "signature_tools",
    "too_deep",
    "without_fields",
)


def check_entry(
    raw: bytes,
    *,
    models: frozenset[str] | None = DEFAULT_MODELS,
    max_output_tokens: Mapping[str, int] = MODEL_MAX_OUTPUT_TOKENS,
) -> Checked | SchemaError:
    """Decode and check one batch entry ``{"custom_id": ..., "params": {...}}``.

    ``models=None`` accepts any model name (a deployment that knows its own list).

    The common request (text messages, optional system prompt, sampling fields,
    custom tools) takes a fast path: a decode into lean Structs, a few attribute
    tests and one signature lookup. Anything the fast path does not accept outright
    (another block kind, ``tool_choice``, ``thinking``, or any rule broken) goes
    through the full strict decode, which gives the same verdict and the exact reason.
    """
    try:
        entry = _fast_decoder.decode(raw)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        # (a line nested too deep to decode: the full path measures it before decoding)
        return _check_entry_full(raw, models, max_output_tokens)
    # The fast Structs nest 7 levels at most; only ``tools`` (kept raw) may go deeper,
    # and ``_fast_tools`` sends a tools value too deep for MAX_JSON_DEPTH on.
    # Every test below either passes or sends the entry down the full path; none
    # can accept what the full path rejects. The decode has made sure already that
    # the messages and their contents are not empty.
    custom_id = entry.custom_id
    params = entry.params
    model = params.model
    if (
        not custom_id.isascii()
        or not custom_id.encode().translate(_ID_TABLE).isalpha()
        or (models is not None and model not in models)
    ):
        return _check_entry_full(raw, models, max_output_tokens)
    max_tokens = params.max_tokens
    cap = max_output_tokens.get(model, MAX_TOKENS_LIMIT)
    if max_tokens > cap or max_tokens > MAX_TOKENS_LIMIT:
        return _check_entry_full(raw, models, max_output_tokens)
    kinds = 0
    marked = False  # a block with a cache_control (explicit null included)
    for message in params.messages:
        content = message.content
        if type(content) is str:
            kinds |= _KIND_STR
        else:
            kinds |= _KIND_TEXT
            for block in content:
                if type(block) is not TextBlockParam:
                    return _check_entry_full(raw, models, max_output_tokens)
                text = block.text
                if not text or text.isspace():
                    return _check_entry_full(raw, models, max_output_tokens)
                if block.cache_control is not UNSET:
                    marked = True
    # the loop leaves ``message`` at the final message (there is at least one)
    if message.role == "assistant" and _ends_in_whitespace(message.content):
        return _check_entry_full(raw, models, max_output_tokens)
    system = params.system
    if type(system) is list:
        for block in system:
            text = block.text
            if not text or text.isspace():
                return _check_entry_full(raw, models, max_output_tokens)
            if block.cache_control is not UNSET:
                marked = True
    stops = params.stop_sequences
    if stops is not UNSET:
        for stop in stops:
            if not stop or stop.isspace():
                return _check_entry_full(raw, models, max_output_tokens)
    tools = params.tools
    names: tuple[str, ...] = ()
    cached_tools: list[Tool] | None = None
    if tools is not UNSET:
        key = bytes(tools)
        known = _FAST_TOOLS.get(key, _UNCHECKED)
        if known is _UNCHECKED:
            known = _fast_tools(key)
        if known is None:
            return _check_entry_full(raw, models, max_output_tokens)
        names, cached_tools = known
    # Few requests set cache_control: the passes above only note one, and only then
    # are the breakpoints counted and their TTL order checked.
    if marked or cached_tools is not None:
        if _check_cache_control(cached_tools or (), system, params.messages) is not None:
            return _check_entry_full(raw, models, max_output_tokens)
    # Most requests set none of the rarer optional fields: their key says so in
    # fewer items (cheaper to hash). ``stream`` is in the long key as its value, so
    # ``true`` (refused) is never cached.
    shape: tuple[object, ...] = (
        model,
        kinds,
        names,
        system is UNSET,
        tools is UNSET,
        params.temperature is UNSET,
    )
    if not (
        params.top_p is UNSET
        and params.top_k is UNSET
        and stops is UNSET
        and params.metadata is UNSET
        and params.service_tier is UNSET
        and params.stream is UNSET
    ):
        shape += (
            params.top_p is UNSET,
            params.top_k is UNSET,
            stops is UNSET,
            params.metadata is UNSET,
            params.service_tier is UNSET,
            params.stream,
        )
    found = _FAST_SIGNATURES.get(shape)
    if found is None:
        if params.stream is True:
            return _check_entry_full(raw, models, max_output_tokens)
        found = (_fast_signature(params, kinds, names), model)
        if len(_FAST_SIGNATURES) >= _MAX_SIGNATURES:
            _FAST_SIGNATURES.clear()
        _FAST_SIGNATURES[shape] = found
    return Checked(
        custom_id,
        found[1],
        max_tokens,
        found[0],
        len(raw) // 3 + 1,
        marked or cached_tools is not None,
    )


# ------------------------------------------------------------------------ fast path


#: on the fast Structs only: an empty value goes to the full path, which says why
_NOT_EMPTY = Meta(min_length=1)


class _NotText(msgspec.Struct, tag_field="type", tag="", gc=False):
    """Never accepted (the fast path sends it on): its place in the union makes
    ``type`` required on message blocks, as a lone tagged Struct would take a block
    without one."""


class _FastMessage(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """``MessageParam`` restricted to text: a string or text blocks only."""

    role: Literal["user", "assistant", "system"]
    content: Annotated[str, _NOT_EMPTY] | Annotated[list[TextBlockParam | _NotText], _NOT_EMPTY]


class _FastParams(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """The fields of ``MessageCreateParams`` the fast path takes, with the same types
    and constraints and in the same order (the signature lists fields in that order);
    ``messages`` and each message's content must also be non-empty here, so the
    decode sends an empty one to the full path instead of a test per line.
    ``tools`` stays raw: requests repeat the same tool definitions, so they are
    decoded and checked once per distinct text (``_FAST_TOOLS``)."""

    model: Annotated[str, Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: Annotated[list[_FastMessage], _NOT_EMPTY]
    system: str | list[TextBlockParam] | UnsetType = UNSET
    tools: msgspec.Raw | UnsetType = UNSET
    temperature: Temperature | UnsetType = UNSET
    top_p: TopP | UnsetType = UNSET
    top_k: TopK | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    service_tier: Literal["auto", "standard_only"] | UnsetType = UNSET
    stream: bool | UnsetType = UNSET


class _FastEntry(msgspec.Struct, forbid_unknown_fields=True, gc=False):
    """``BatchRequest`` with the custom_id pattern tested in Python (msgspec runs a
    regex per value, a third of the decode): an ASCII string is ``[a-zA-Z0-9_-]*``
    exactly when its bytes are all letters once digits, ``-`` and ``_`` are mapped
    to a letter (``bytes.translate``: a table lookup per byte, cheaper than two
    ``str.replace`` and an ``isalnum``)."""

    custom_id: Annotated[str, Meta(min_length=1, max_length=64)]
    params: _FastParams


_fast_decoder = msgspec.json.Decoder(_FastEntry)
_tools_decoder = msgspec.json.Decoder(list[Tool])
#: digits, ``-`` and ``_`` -> a letter; every other byte unchanged
_ID_TABLE = bytes.maketrans(b"0123456789-_", b"a" * 12)
_KIND_STR = 1
_KIND_TEXT = 2
_FAST_FIELDS = _FastParams.__struct_fields__
#: tools JSON -> when valid (without tool_choice): its sorted tool names, and the
#: decoded tools if one carries a cache_control breakpoint (else None); when not, None
_FAST_TOOLS: dict[bytes, tuple[tuple[str, ...], list[Tool] | None] | None] = {}
_MAX_FAST_TOOLS = 1024
_UNCHECKED: tuple[tuple[str, ...], None] = (("\0unchecked",), None)
#: (model, kinds, tool names, which optional fields are absent[, stream]) ->
#: (signature, model): the model string is then one object for all entries of a shape
_FAST_SIGNATURES: dict[tuple[object, ...], tuple[str, str]] = {}


def _fast_tools(key: bytes) -> tuple[tuple[str, ...], list[Tool] | None] | None:
    """Decode and check a ``tools`` value once; remember the verdict."""
    try:
        # the line holds tools two levels down (entry, params): too deep for the line
        # goes to the full path, which says so
        if too_deep(key, MAX_JSON_DEPTH - 2) is not None:
            raise RecursionError
        tools = _tools_decoder.decode(key)
    except (msgspec.DecodeError, UnicodeDecodeError, RecursionError):
        known = None
    else:
        problem = _check_tool_list(tools, UNSET) or _custom_tool_fields(key, tools)
        names = tuple(sorted([t.name for t in tools]))
        cached = tools if any(t.cache_control for t in tools) else None
        known = None if problem is not None else (names, cached)
    if len(_FAST_TOOLS) >= _MAX_FAST_TOOLS:
        _FAST_TOOLS.clear()
    _FAST_TOOLS[key] = known
    return known


def _fast_signature(params: _FastParams, kinds: int, tools: tuple[str, ...]) -> str:
    """The same string ``_schema_full._signature`` gives for the full decode of these params."""
    values = msgspec.structs.astuple(params)
    fields = ",".join(f for f, v in zip(_FAST_FIELDS, values, strict=True) if v is not UNSET)
    tags = [tag for bit, tag in ((_KIND_STR, "str"), (_KIND_TEXT, "text")) if kinds & bit]
    return "|".join((params.model, fields, ",".join(tools), ",".join(tags)))
