"""Server-sent events of a streamed Messages answer (``"stream": true``).

The events are cut from the final ``Message`` the fake model gives, so a streamed call
and a plain one answer the same: the SDK's accumulator (``messages.stream()``) puts
these events back together into exactly that message. The order is the service's:
``message_start`` (the message with no content, its input usage and one output token),
a ``ping``, then per content block ``content_block_start`` (the block empty),
``content_block_delta`` events (``text_delta``; ``thinking_delta`` and a last
``signature_delta``; ``input_json_delta`` pieces of a tool's input JSON) and
``content_block_stop``, then ``message_delta`` (stop reason, stop sequence and the
cumulative usage) and ``message_stop``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from collections.abc import Iterator

    from pipeline.api._types import Message

__all__ = ("CONTENT_TYPE", "error_event", "message_events")

CONTENT_TYPE = b"text/event-stream; charset=utf-8"
#: characters of text (or of a tool's input JSON) per delta event
_PIECE = 24
_encoder = msgspec.json.Encoder()


def _event(name: str, data: dict[str, Any]) -> bytes:
    return b"event: " + name.encode() + b"\ndata: " + _encoder.encode(data) + b"\n\n"


def _pieces(text: str) -> Iterator[str]:
    for start in range(0, len(text), _PIECE):
        yield text[start : start + _PIECE]


def _json_pieces(text: str) -> Iterator[str]:
    """``text`` (JSON) in pieces that each end just after a ``,`` ``:`` ``{`` or ``[``,
    so that no piece ends inside a number or a literal (the SDK parses what it has
    received so far as partial JSON after each one)."""
    start = 0
    while start < len(text):
        cut = min((i for c in ",:{[" if (i := text.find(c, start + _PIECE)) >= 0), default=-1)
        end = len(text) if cut < 0 else cut + 1
        yield text[start:end]
        start = end


def _block_events(index: int, block: dict[str, Any]) -> Iterator[bytes]:
    kind = block.get("type")
    deltas: list[dict[str, Any]] = []
    start = dict(block)
    if kind == "text":
        start["text"] = ""
        deltas = [{"type": "text_delta", "text": t} for t in _pieces(block["text"])]
    elif kind == "thinking":
        start["thinking"] = start["signature"] = ""
        deltas = [{"type": "thinking_delta", "thinking": t} for t in _pieces(block["thinking"])]
        deltas.append({"type": "signature_delta", "signature": block["signature"]})
    elif "input" in block:  # tool_use, server_tool_use: the input arrives as JSON text
        start["input"] = {}
        text = _encoder.encode(block["input"]).decode()
        deltas = [{"type": "input_json_delta", "partial_json": ""}]
        deltas += [{"type": "input_json_delta", "partial_json": t} for t in _json_pieces(text)]
    yield _event(
        "content_block_start",
        {"type": "content_block_start", "index": index, "content_block": start},
    )
    for delta in deltas:
        yield _event(
            "content_block_delta", {"type": "content_block_delta", "index": index, "delta": delta}
        )
    yield _event("content_block_stop", {"type": "content_block_stop", "index": index})


def error_event(body: bytes) -> bytes:
    """The ``error`` event that breaks off a stream; ``body`` is the error envelope."""
    return b"event: error\ndata: " + body + b"\n\n"


def message_events(message: Message) -> Iterator[bytes]:
    """The events of ``message``, each one encoded (``event:`` and ``data:`` lines)."""
    whole: dict[str, Any] = msgspec.to_builtins(message)
    usage: dict[str, Any] = whole["usage"]
    first = {
        **whole,
        "content": [],
        "stop_reason": None,
        "stop_sequence": None,
        "usage": {**usage, "output_tokens": min(1, usage["output_tokens"])},
    }
    yield _event("message_start", {"type": "message_start", "message": first})
    yield _event("ping", {"type": "ping"})
    for index, block in enumerate(whole["content"]):
        yield from _block_events(index, block)
    # usage on message_delta is cumulative: everything but the service tier
    final = {k: v for k, v in usage.items() if k != "service_tier"}
    delta = {"stop_reason": whole["stop_reason"], "stop_sequence": whole["stop_sequence"]}
    yield _event("message_delta", {"type": "message_delta", "delta": delta, "usage": final})
    yield _event("message_stop", {"type": "message_stop"})
