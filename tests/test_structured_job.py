"""A job with structured-output requests, run on the emulator: a schema the service
would refuse is rejected before any batch, naming the line, custom_id and keyword;
the others come back as JSON text valid for their schema (checked by jsonschema)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import jsonschema
import msgspec

from pipeline import Client, Pipeline, PipelineConfig
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

CONFIG = PipelineConfig(
    max_batch_requests=20, linger_seconds=0.01, poll_interval=0.01, dry_run="off"
)
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "when": {"type": "string", "format": "date"},
        "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "minItems": 1},
        "score": {"anyOf": [{"type": "number"}, {"type": "null"}]},
    },
    "required": ["name", "when", "tags", "score"],
    "additionalProperties": False,
}


def entry(cid: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {
        "custom_id": cid,
        "params": {
            "model": "claude-sonnet-4-6",
            "max_tokens": 512,
            "messages": [{"role": "user", "content": f"record {cid}"}],
            "output_config": {"format": {"type": "json_schema", "schema": schema}},
        },
    }


async def test_structured_requests_in_a_job(tmp_path: Path) -> None:
    bounded = {
        **SCHEMA,
        "properties": {**SCHEMA["properties"], "n": {"type": "integer", "maximum": 3}},
    }
    lines = [entry("ok-1", SCHEMA), entry("bounded", bounded), entry("ok-2", SCHEMA)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(map(msgspec.json.encode, lines)) + b"\n")
    async with (
        serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "emu") as emu,
        Client(api_key="test-key", base_url=emu.url) as client,
    ):
        pipeline = Pipeline(
            tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=CONFIG, client=client
        )
        with anyio.fail_after(30):
            stats = await pipeline.run()
        assert emu.submissions() == {"ok-1": 1, "ok-2": 1}  # the refused one never went
    assert stats.outcomes == {"succeeded": 2}
    (reject,) = map(msgspec.json.decode, (tmp_path / "out.rejects.jsonl").read_bytes().splitlines())
    assert reject["line"] == 2
    assert reject["custom_id"] == "bounded"
    assert "output_config.format.schema.properties.n.maximum" in reject["error"]["message"]
    texts = {}
    for raw in (tmp_path / "out.jsonl").read_bytes().splitlines():
        line = msgspec.json.decode(raw)
        (block,) = line["result"]["message"]["content"]
        value = msgspec.json.decode(block["text"])
        jsonschema.Draft202012Validator(
            SCHEMA, format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER
        ).validate(value)
        texts[line["custom_id"]] = block["text"]
    assert set(texts) == {"ok-1", "ok-2"}
