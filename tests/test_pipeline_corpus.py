"""The schema corpus through the whole pipeline: in one mixed file, every valid
request is submitted and answered, and every bad one is rejected with its line,
custom_id and the precise reason, while the rest of the job goes on."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec

from pipeline._config import PipelineConfig
from pipeline._pipeline import Pipeline
from pipeline.api._client import Client
from pipeline.api._schema import DEFAULT_MODELS
from pipeline.testing import EmulatorConfig, serve_emulator
from tests.api._corpus import CORPUS, GOOD

if TYPE_CHECKING:
    from pathlib import Path

CONFIG = PipelineConfig(
    max_batch_requests=7,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",  # the local checks alone: the corpus is about them
    models=DEFAULT_MODELS,  # the corpus's unknown-model case is checked locally
)


def renamed(raw: bytes, custom_id: str) -> bytes:
    entry = msgspec.json.decode(raw)
    entry["custom_id"] = custom_id
    return msgspec.json.encode(entry)


async def test_a_mixed_file_sends_every_valid_request_and_rejects_every_bad_one(
    tmp_path: Path,
) -> None:
    lines: list[bytes] = []
    good_ids: list[str] = []
    expected_rejects: dict[int, str] = {}  # line -> reason
    for index, (_, bad, reason) in enumerate(CORPUS):
        if index < len(GOOD):
            good_ids.append(f"good-{index}")
            lines.append(renamed(GOOD[index], good_ids[-1]))
        lines.append(bad)
        expected_rejects[len(lines)] = reason
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl",
                tmp_path / "out.jsonl",
                tmp_path / "rejects.jsonl",
                config=CONFIG,
                client=client,
            )
            with anyio.fail_after(60):
                stats = await pipeline.run()
        submissions = emu.submissions()
    assert stats.finished
    assert submissions == dict.fromkeys(good_ids, 1)
    out = [msgspec.json.decode(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert sorted(line["custom_id"] for line in out) == sorted(good_ids)
    assert {line["result"]["type"] for line in out} == {"succeeded"}
    rejects = [
        msgspec.json.decode(x) for x in (tmp_path / "rejects.jsonl").read_bytes().splitlines()
    ]
    got = {r["line"]: r["error"]["message"] for r in rejects}
    assert sorted(got) == sorted(expected_rejects)  # each bad line, once
    # the schema's own reason, word for word (a line that is no JSON object at all
    # gets the validate stage's wording for that, tested with the stage; an unknown
    # param gets a hint after it, on how to let a newer one through)
    json_level = ("not valid JSON", "expected `object`")
    for line, reason in expected_rejects.items():
        if reason.startswith("params: unknown field"):
            assert got[line].startswith(reason + " (a misspelt param?"), line
        elif not reason.startswith(json_level):
            assert got[line] == reason, line
