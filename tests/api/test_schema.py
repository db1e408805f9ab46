"""check_entry's outputs besides the reject reasons: signatures, token estimates."""

from __future__ import annotations

from typing import Any

import msgspec

from pipeline.api._schema import (
    IMAGE_TOKENS,
    Checked,
    approx_input_tokens,
    check_entry,
    check_params,
    signature,
)
from pipeline.api._types import MessageCreateParams


def raw(**params: Any) -> bytes:
    base: dict[str, Any] = {
        "model": "claude-3-haiku-20240307",
        "max_tokens": 10,
        "messages": [{"role": "user", "content": "Hi"}],
    }
    base.update(params)
    return msgspec.json.encode({"custom_id": "c1", "params": base})


def checked(data: bytes) -> Checked:
    result = check_entry(data)
    assert isinstance(result, Checked), result
    return result


def test_same_shape_same_signature_whatever_the_text() -> None:
    a = checked(raw(messages=[{"role": "user", "content": "one"}], max_tokens=5))
    b = checked(raw(messages=[{"role": "user", "content": "a much longer prompt"}]))
    assert a.signature == b.signature


def test_signature_tells_shapes_apart() -> None:
    base = checked(raw()).signature
    image = [{"type": "image", "source": {"type": "url", "url": "https://x/y.png"}}]
    others = {
        checked(raw(model="claude-3-opus-20240229")).signature,
        checked(raw(system="s")).signature,
        checked(raw(temperature=0.5)).signature,
        checked(raw(messages=[{"role": "user", "content": image}])).signature,
        checked(raw(tools=[{"name": "a", "input_schema": {"type": "object"}}])).signature,
        checked(raw(tools=[{"name": "b", "input_schema": {"type": "object"}}])).signature,
    }
    assert base not in others
    assert len(others) == 6


def test_signature_function_matches_check_entry() -> None:
    data = raw(system="s", messages=[{"role": "user", "content": [{"type": "text", "text": "x"}]}])
    params = msgspec.json.decode(data, type=dict[str, Any])["params"]
    decoded = msgspec.convert(params, MessageCreateParams)
    assert signature(decoded) == checked(data).signature
    assert signature(decoded) == "claude-3-haiku-20240307|model,max_tokens,messages,system||text"


def test_check_params_paths_are_relative_to_params() -> None:
    params = msgspec.convert(
        {"model": "claude-3-haiku-20240307", "max_tokens": 5, "messages": []},
        MessageCreateParams,
    )
    assert check_params(params) == "messages: must hold at least one message"


def test_check_params_counts_cache_breakpoints_over_tools_system_and_messages() -> None:
    cached = {"type": "ephemeral"}
    block = {"type": "text", "text": "x", "cache_control": cached}
    base = {"model": "claude-3-haiku-20240307", "max_tokens": 5}
    four = {
        **base,
        "tools": [{"name": "a", "input_schema": {"type": "object"}, "cache_control": cached}],
        "system": [block, block],
        "messages": [{"role": "user", "content": [block]}],
    }
    assert check_params(msgspec.convert(four, MessageCreateParams)) is None
    five = {**four, "messages": [{"role": "user", "content": [block, {**block, "text": "y"}]}]}
    assert check_params(msgspec.convert(five, MessageCreateParams)) == (
        "messages[0].content[1].cache_control: "
        "A maximum of 4 blocks with cache_control may be provided. Found 5."
    )


def test_approx_input_tokens_counts_images_flat() -> None:
    image = {"type": "base64", "media_type": "image/png", "data": "A" * 30_000}
    data = raw(messages=[{"role": "user", "content": [{"type": "image", "source": image}]}])
    estimate = checked(data).approx_input_tokens
    assert estimate == (len(data) - 30_000) // 3 + 1 + IMAGE_TOKENS
    assert checked(raw()).approx_input_tokens == approx_input_tokens(raw())
