"""A job of requests with every ``thinking`` type the installed SDK knows passes the
local check and the dry run, and its results carry the thinking blocks (issue 16)."""

from __future__ import annotations

import typing
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from anthropic.types import ThinkingConfigParam

from pipeline import Pipeline, PipelineConfig
from pipeline.api import Client
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path


def thinking_types() -> list[str]:
    """The ``type`` of every member of the installed SDK's ``ThinkingConfigParam``."""
    types = []
    for member in typing.get_args(ThinkingConfigParam):
        hint = typing.get_type_hints(member)["type"]
        while typing.get_origin(hint) is not typing.Literal:
            hint = typing.get_args(hint)[0]  # Required[Literal[...]]
        types += typing.get_args(hint)
    return types


def entry(kind: str) -> bytes:
    thinking: dict[str, Any] = {"type": kind}
    if kind == "enabled":
        thinking["budget_tokens"] = 1024
    params = {
        "model": "claude-opus-4-8",
        "max_tokens": 2048,
        "messages": [{"role": "user", "content": f"think {kind}"}],
        "thinking": thinking,
    }
    return msgspec.json.encode({"custom_id": kind.replace("_", "-"), "params": params})


async def test_every_thinking_type_runs_through_a_job(tmp_path: Path) -> None:
    kinds = thinking_types()
    assert {"enabled", "adaptive", "disabled", "between_tools"} <= set(kinds)
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(map(entry, kinds)) + b"\n")
    config = PipelineConfig(linger_seconds=0.01, poll_interval=0.01, dry_run="count-tokens")
    async with (
        serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu,
        Client(api_key="k", base_url=emu.url) as client,
    ):
        pipeline = Pipeline(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            tmp_path / "rejects.jsonl",
            config=config,
            client=client,
        )
        with anyio.fail_after(30):
            await pipeline.run()
    assert (
        not (tmp_path / "rejects.jsonl").exists() or not (tmp_path / "rejects.jsonl").read_bytes()
    )
    out = {
        line["custom_id"]: line["result"]
        for line in map(msgspec.json.decode, (tmp_path / "out.jsonl").read_bytes().splitlines())
    }
    assert sorted(out) == sorted(k.replace("_", "-") for k in kinds)
    for kind in kinds:
        result = out[kind.replace("_", "-")]
        assert result["type"] == "succeeded", result
        blocks = [b["type"] for b in result["message"]["content"]]
        assert blocks == (["thinking", "text"] if kind in ("enabled", "adaptive") else ["text"])
