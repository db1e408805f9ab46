"""Helpers shared by the end-to-end tests of the runner (``Pipeline`` against the
emulator on loopback): the request entries, input files, result files and one job."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pipeline import Client, Pipeline, PipelineConfig
from pipeline.api import ResultLine

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "claude-3-haiku-20240307"
FAST = PipelineConfig(
    max_batch_requests=10,
    max_in_flight=40,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",
)


def entry(cid: str, text: str = "hello") -> dict[str, Any]:
    return {
        "custom_id": cid,
        "params": {
            "model": MODEL,
            "max_tokens": 16,
            "messages": [{"role": "user", "content": text}],
        },
    }


def write_input(path: Path, n: int, bad: dict[int, bytes] | None = None) -> list[str]:
    """``n`` valid lines, with ``bad`` lines inserted at the given 1-based line numbers."""
    lines = [msgspec.json.encode(entry(f"req-{i}", f"question {i}")) for i in range(n)]
    for line_no, data in sorted((bad or {}).items()):
        lines.insert(line_no - 1, data)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return [f"req-{i}" for i in range(n)]


def kind(line: ResultLine) -> str:
    """The result's type tag: succeeded, errored, canceled or expired."""
    tag = type(line.result).__struct_config__.tag
    assert isinstance(tag, str)
    return tag


def read_results(path: Path) -> list[ResultLine]:
    decoder = msgspec.json.Decoder(ResultLine)
    return [decoder.decode(line) for line in path.read_bytes().splitlines()]


async def run_job(
    tmp_path: Path, emu_url: str, config: PipelineConfig = FAST, **kwargs: Any
) -> tuple[Pipeline, Any]:
    async with Client(api_key="test-key", base_url=emu_url) as client:
        pipeline = Pipeline(
            kwargs.pop("source", tmp_path / "in.jsonl"),
            kwargs.pop("output", tmp_path / "out.jsonl"),
            config=config,
            client=client,
            **kwargs,
        )
        with anyio.fail_after(30):
            stats = await pipeline.run()
    return pipeline, stats
