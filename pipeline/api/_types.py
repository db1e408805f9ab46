"""Wire types: every object that crosses the Message Batches and Messages APIs.

Two families live here:

* request-side types (``*Param`` / ``MessageCreateParams``) are strict: they forbid
  unknown fields and carry the service's range constraints, so decoding a request
  with ``msgspec`` *is* its schema validation, and the error names the field path;
* response-side types (``MessageBatch``, ``Message``, result lines, errors) are
  lenient: unknown fields are ignored so a newer service never breaks the client.

The official ``anthropic`` SDK's types are the reference: what these encode the SDK
decodes, and the other way round (tests/api/test_types.py checks both directions).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeAlias

import msgspec
from msgspec import UNSET, Meta, Struct, UnsetType

__all__ = (
    "ERROR_STATUS",
    "ERROR_TYPES",
    "Base64ImageSource",
    "BatchCreateBody",
    "BatchRequest",
    "CacheControl",
    "CacheCreation",
    "CanceledResult",
    "ContentBlockSource",
    "CountTokensParams",
    "DeletedMessageBatch",
    "DocumentBlockParam",
    "ErrorDetail",
    "ErrorResponse",
    "ErroredResult",
    "ExpiredResult",
    "FileSource",
    "ImageBlockParam",
    "Message",
    "MessageBatch",
    "MessageBatchList",
    "MessageBatchResult",
    "MessageCreateParams",
    "MessageParam",
    "Metadata",
    "ModelInfo",
    "ModelList",
    "PlainTextSource",
    "RedactedThinkingBlockParam",
    "RequestCounts",
    "ResultLine",
    "SearchResultBlockParam",
    "ServerToolBlockParam",
    "SucceededResult",
    "TextBlockParam",
    "ThinkingAdaptive",
    "ThinkingBetweenTools",
    "ThinkingBlockParam",
    "ThinkingConfig",
    "ThinkingDisabled",
    "ThinkingEnabled",
    "TokenCount",
    "Tool",
    "ToolChoice",
    "ToolChoiceAny",
    "ToolChoiceAuto",
    "ToolChoiceNone",
    "ToolChoiceTool",
    "ToolResultBlockParam",
    "ToolUseBlockParam",
    "URLSource",
    "Usage",
)

# --------------------------------------------------------------------------- params


class _Param(Struct, forbid_unknown_fields=True, omit_defaults=True, tag_field="type", gc=False):
    """Base of request-side blocks: strict, tagged by ``type``, compact on encode.

    Request-side Structs are ``gc=False``: decoded from JSON they hold trees, never
    cycles, so the cyclic GC need not track them (cheaper decode, fewer collections).
    """


class CacheControl(Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | UnsetType = UNSET


class Base64ImageSource(_Param, tag="base64"):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp", "application/pdf"]
    data: Annotated[str, Meta(min_length=1)]


class URLSource(_Param, tag="url"):
    url: Annotated[str, Meta(min_length=1)]


class FileSource(_Param, tag="file"):
    file_id: Annotated[str, Meta(min_length=1)]


class PlainTextSource(_Param, tag="text"):
    media_type: Literal["text/plain"]
    data: str


class TextBlockParam(_Param, tag="text"):
    text: str
    cache_control: CacheControl | None | UnsetType = UNSET
    citations: list[dict[str, Any]] | None | UnsetType = UNSET


class ImageBlockParam(_Param, tag="image"):
    source: Base64ImageSource | URLSource | FileSource
    cache_control: CacheControl | None | UnsetType = UNSET
    transformations: dict[str, Any] | None | UnsetType = UNSET


class ContentBlockSource(_Param, tag="content"):
    content: str | list[TextBlockParam | ImageBlockParam]


class DocumentBlockParam(_Param, tag="document"):
    source: Base64ImageSource | PlainTextSource | ContentBlockSource | URLSource | FileSource
    cache_control: CacheControl | None | UnsetType = UNSET
    citations: dict[str, Any] | None | UnsetType = UNSET
    context: str | None | UnsetType = UNSET
    title: str | None | UnsetType = UNSET


class SearchResultBlockParam(_Param, tag="search_result"):
    content: list[TextBlockParam]
    source: str
    title: str
    cache_control: CacheControl | None | UnsetType = UNSET
    citations: dict[str, Any] | UnsetType = UNSET


class ThinkingBlockParam(_Param, tag="thinking"):
    thinking: str
    signature: str


class RedactedThinkingBlockParam(_Param, tag="redacted_thinking"):
    data: str


class ToolUseBlockParam(_Param, tag="tool_use"):
    id: Annotated[str, Meta(min_length=1)]
    name: Annotated[str, Meta(min_length=1)]
    input: dict[str, Any]
    cache_control: CacheControl | None | UnsetType = UNSET
    caller: dict[str, Any] | UnsetType = UNSET
    toolset_name: str | None | UnsetType = UNSET


class ToolResultBlockParam(_Param, tag="tool_result"):
    tool_use_id: Annotated[str, Meta(min_length=1)]
    content: (
        str | list[TextBlockParam | ImageBlockParam | SearchResultBlockParam | DocumentBlockParam]
    ) | UnsetType = UNSET
    is_error: bool | UnsetType = UNSET
    cache_control: CacheControl | None | UnsetType = UNSET
    toolset_name: str | None | UnsetType = UNSET


class ServerToolBlockParam(
    Struct,
    omit_defaults=True,
    tag_field="type",
    tag="server_tool_use",
    forbid_unknown_fields=False,
    gc=False,
):
    """A server tool call echoed back in a later turn; its inner shape is the service's."""

    id: str
    name: str
    input: dict[str, Any] = {}


class _ServerResultParam(
    Struct, omit_defaults=True, tag_field="type", forbid_unknown_fields=False, gc=False
):
    """Base of server-tool result blocks echoed back in a later turn: their inner
    shape is the service's to check, so unknown fields pass."""


class WebSearchToolResultParam(_ServerResultParam, tag="web_search_tool_result"):
    tool_use_id: str
    content: Any = None


class WebFetchToolResultParam(_ServerResultParam, tag="web_fetch_tool_result"):
    tool_use_id: str
    content: Any = None


class CodeExecutionToolResultParam(_ServerResultParam, tag="code_execution_tool_result"):
    tool_use_id: str
    content: Any = None


class BashCodeExecutionToolResultParam(_ServerResultParam, tag="bash_code_execution_tool_result"):
    tool_use_id: str
    content: Any = None


class TextEditorCodeExecutionToolResultParam(
    _ServerResultParam, tag="text_editor_code_execution_tool_result"
):
    tool_use_id: str
    content: Any = None


class ToolSearchToolResultParam(_ServerResultParam, tag="tool_search_tool_result"):
    tool_use_id: str
    content: Any = None


class ContainerUploadParam(_ServerResultParam, tag="container_upload"):
    file_id: str


ContentBlockParam: TypeAlias = (
    TextBlockParam
    | ImageBlockParam
    | DocumentBlockParam
    | SearchResultBlockParam
    | ThinkingBlockParam
    | RedactedThinkingBlockParam
    | ToolUseBlockParam
    | ToolResultBlockParam
    | ServerToolBlockParam
    | WebSearchToolResultParam
    | WebFetchToolResultParam
    | CodeExecutionToolResultParam
    | BashCodeExecutionToolResultParam
    | TextEditorCodeExecutionToolResultParam
    | ToolSearchToolResultParam
    | ContainerUploadParam
)


class MessageParam(Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    role: Literal["user", "assistant", "system"]
    content: str | list[ContentBlockParam]


class Tool(Struct, forbid_unknown_fields=False, omit_defaults=True, gc=False):
    """A custom tool (``type`` absent or ``"custom"``) or a server tool (``type`` versioned).

    Custom tools need ``input_schema``; server tools have their own fields, which the
    service checks, hence unknown fields are let through here.
    """

    name: Annotated[str, Meta(min_length=1, max_length=128)]
    type: str | None | UnsetType = UNSET
    input_schema: dict[str, Any] | UnsetType = UNSET
    description: str | UnsetType = UNSET
    cache_control: CacheControl | None | UnsetType = UNSET


class _ToolChoice(
    Struct, forbid_unknown_fields=True, omit_defaults=True, tag_field="type", gc=False
):
    pass


class ToolChoiceAuto(_ToolChoice, tag="auto"):
    disable_parallel_tool_use: bool | UnsetType = UNSET


class ToolChoiceAny(_ToolChoice, tag="any"):
    disable_parallel_tool_use: bool | UnsetType = UNSET


class ToolChoiceTool(_ToolChoice, tag="tool"):
    name: Annotated[str, Meta(min_length=1)]
    disable_parallel_tool_use: bool | UnsetType = UNSET


class ToolChoiceNone(_ToolChoice, tag="none"):
    pass


ToolChoice: TypeAlias = ToolChoiceAuto | ToolChoiceAny | ToolChoiceTool | ToolChoiceNone


class ThinkingEnabled(_Param, tag="enabled"):
    budget_tokens: Annotated[int, Meta(ge=1024)]
    display: Literal["summarized", "omitted"] | None | UnsetType = UNSET


class ThinkingDisabled(_Param, tag="disabled"):
    pass


class ThinkingAdaptive(_Param, tag="adaptive"):
    display: Literal["summarized", "omitted"] | None | UnsetType = UNSET


class ThinkingBetweenTools(_Param, tag="between_tools"):
    """Thinking off; short progress notes between tool calls come back as thinking."""


#: Every ``thinking`` the service takes (the SDK's ``ThinkingConfigParam`` union).
ThinkingConfig: TypeAlias = (
    ThinkingEnabled | ThinkingDisabled | ThinkingAdaptive | ThinkingBetweenTools
)


class Metadata(Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    user_id: Annotated[str, Meta(max_length=256)] | None | UnsetType = UNSET


Temperature = Annotated[float, Meta(ge=0.0, le=1.0)]
TopP = Annotated[float, Meta(ge=0.0, le=1.0)]
TopK = Annotated[int, Meta(ge=0)]


class MessageCreateParams(Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """Everything ``POST /v1/messages`` (and a batch entry's ``params``) accepts.

    Complex beta-only objects are typed as plain mappings: their inner rules are the
    service's, and a batch must carry them through untouched.
    """

    model: Annotated[str, Meta(min_length=1)]
    max_tokens: Annotated[int, Meta(ge=1)]
    messages: list[MessageParam]
    system: str | list[TextBlockParam] | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    temperature: Temperature | UnsetType = UNSET
    top_p: TopP | UnsetType = UNSET
    top_k: TopK | UnsetType = UNSET
    stop_sequences: list[str] | UnsetType = UNSET
    metadata: Metadata | UnsetType = UNSET
    thinking: ThinkingConfig | UnsetType = UNSET
    service_tier: Literal["auto", "standard_only"] | UnsetType = UNSET
    stream: bool | UnsetType = UNSET
    cache_control: CacheControl | None | UnsetType = UNSET
    container: str | dict[str, Any] | None | UnsetType = UNSET
    context_management: dict[str, Any] | None | UnsetType = UNSET
    mcp_servers: list[dict[str, Any]] | UnsetType = UNSET
    inference_geo: str | None | UnsetType = UNSET
    output_config: dict[str, Any] | UnsetType = UNSET
    output_format: dict[str, Any] | None | UnsetType = UNSET
    diagnostics: dict[str, Any] | None | UnsetType = UNSET
    speed: Literal["standard", "fast"] | None | UnsetType = UNSET
    user_profile_id: str | UnsetType = UNSET
    workspace_id: str | UnsetType = UNSET


class CountTokensParams(Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """``POST /v1/messages/count_tokens``: the create params without ``max_tokens``."""

    model: Annotated[str, Meta(min_length=1)]
    messages: list[MessageParam]
    system: str | list[TextBlockParam] | UnsetType = UNSET
    tools: list[Tool] | UnsetType = UNSET
    tool_choice: ToolChoice | UnsetType = UNSET
    thinking: ThinkingConfig | UnsetType = UNSET
    cache_control: CacheControl | None | UnsetType = UNSET
    output_config: dict[str, Any] | UnsetType = UNSET
    speed: Literal["standard", "fast"] | None | UnsetType = UNSET
    mcp_servers: list[dict[str, Any]] | UnsetType = UNSET
    context_management: dict[str, Any] | None | UnsetType = UNSET


CustomId = Annotated[str, Meta(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]{1,64}$")]


class BatchRequest(Struct, forbid_unknown_fields=True, gc=False):
    """One entry of a batch: ``{"custom_id": ..., "params": {...}}``."""

    custom_id: CustomId
    params: MessageCreateParams


class BatchCreateBody(Struct, forbid_unknown_fields=True, gc=False):
    requests: list[BatchRequest]


class TokenCount(Struct):
    input_tokens: int


# ------------------------------------------------------------------------- responses


class RequestCounts(Struct):
    processing: int = 0
    succeeded: int = 0
    errored: int = 0
    canceled: int = 0
    expired: int = 0

    @property
    def total(self) -> int:
        return self.processing + self.succeeded + self.errored + self.canceled + self.expired


ProcessingStatus: TypeAlias = Literal["in_progress", "canceling", "ended"]


class MessageBatch(Struct, kw_only=True):
    """A batch as the service reports it. Timestamps stay RFC 3339 strings."""

    id: str
    type: Literal["message_batch"] = "message_batch"
    processing_status: ProcessingStatus
    request_counts: RequestCounts
    created_at: str
    expires_at: str
    ended_at: str | None = None
    cancel_initiated_at: str | None = None
    archived_at: str | None = None
    results_url: str | None = None


class DeletedMessageBatch(Struct):
    id: str
    type: Literal["message_batch_deleted"] = "message_batch_deleted"


class MessageBatchList(Struct):
    data: list[MessageBatch]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


class CacheCreation(Struct):
    """The prompt-cache writes of a ``Usage``, by TTL."""

    ephemeral_1h_input_tokens: int = 0
    ephemeral_5m_input_tokens: int = 0


class Usage(Struct, omit_defaults=True):
    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int | None = None
    cache_read_input_tokens: int | None = None
    service_tier: Literal["standard", "priority", "batch"] | None = None
    cache_creation: CacheCreation | None = None


class Message(Struct, kw_only=True):
    """A model answer. ``content`` blocks are kept as mappings keyed on ``type``
    (text, tool_use, thinking, server blocks...), so new block kinds never break
    decoding."""

    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[dict[str, Any]]
    stop_reason: str | None = None
    stop_sequence: str | None = None
    usage: Usage


class ModelInfo(Struct, kw_only=True):
    """A model as ``GET /v1/models`` describes it (the SDK's ``ModelInfo``).

    ``lifecycle``: ``active``, ``deprecated`` (still callable) or ``retired`` (requests
    naming it fail with ``not_found_error``).
    """

    id: str
    type: Literal["model"] = "model"
    display_name: str
    created_at: str
    lifecycle: Literal["active", "deprecated", "retired"] = "active"
    deprecated_at: str | None = None
    retires_at: str | None = None
    line: str | None = None
    max_input_tokens: int | None = None
    max_tokens: int | None = None
    capabilities: dict[str, Any] | None = None


class ModelList(Struct):
    """One page of ``GET /v1/models``: newest first, paged like the batch list."""

    data: list[ModelInfo]
    has_more: bool
    first_id: str | None = None
    last_id: str | None = None


ErrorType: TypeAlias = Literal[
    "invalid_request_error",
    "authentication_error",
    "billing_error",
    "permission_error",
    "not_found_error",
    "request_too_large",
    "rate_limit_error",
    "timeout_error",
    "api_error",
    "overloaded_error",
]

#: HTTP status of each error type, as the service answers them.
ERROR_STATUS: dict[str, int] = {
    "invalid_request_error": 400,
    "authentication_error": 401,
    "billing_error": 402,
    "permission_error": 403,
    "not_found_error": 404,
    "request_too_large": 413,
    "rate_limit_error": 429,
    "api_error": 500,
    "timeout_error": 504,
    "overloaded_error": 529,
}
ERROR_TYPES: frozenset[str] = frozenset(ERROR_STATUS)


class ErrorDetail(Struct, omit_defaults=True):
    type: str
    message: str


class ErrorResponse(Struct, kw_only=True):
    """The error envelope: ``{"type":"error","error":{...},"request_id":...}``."""

    type: Literal["error"] = "error"
    error: ErrorDetail
    request_id: str | None = None


class _Result(Struct, tag_field="type"):
    pass


class SucceededResult(_Result, tag="succeeded"):
    message: Message


class ErroredResult(_Result, tag="errored"):
    error: ErrorResponse


class CanceledResult(_Result, tag="canceled"):
    pass


class ExpiredResult(_Result, tag="expired"):
    pass


MessageBatchResult: TypeAlias = SucceededResult | ErroredResult | CanceledResult | ExpiredResult


class ResultLine(Struct):
    """One line of a batch's results JSONL."""

    custom_id: str
    result: MessageBatchResult


def error_body(error_type: str, message: str, request_id: str | None = None) -> bytes:
    """Encode the service's error envelope."""
    return msgspec.json.encode(
        ErrorResponse(error=ErrorDetail(type=error_type, message=message), request_id=request_id)
    )
