"""A job whose requests share cached prompt prefixes, run on the emulator: the summary
shows the cache writes and reads per model, and the cost prices each at its own rate
(writes 1.25x input for 5 minutes, 2x for 1 hour, reads 0.1x, all at batch prices)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline import DEFAULT_PRICES, Client, Pipeline, PipelineConfig, cost_usd, render_summary
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "claude-sonnet-4-6"
OTHER = "claude-opus-4-7"
POLICY = "Answer as the house style guide says, in full sentences. " * 120
GLOSSARY = "Every term of the trade, defined once and used the same way. " * 150
CONFIG = PipelineConfig(
    max_batch_requests=20,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",
)


def entry(cid: str, model: str, text: str, ttl: str | None) -> dict[str, Any]:
    control: dict[str, Any] = {"type": "ephemeral"} | ({"ttl": ttl} if ttl else {})
    return {
        "custom_id": cid,
        "params": {
            "model": model,
            "max_tokens": 16,
            "system": [{"type": "text", "text": text, "cache_control": control}],
            "messages": [{"role": "user", "content": f"question {cid}"}],
        },
    }


@pytest.mark.parametrize("durable", [True, False])  # results from the body on disk or in memory
async def test_the_summary_prices_cache_writes_and_reads(tmp_path: Path, durable: bool) -> None:
    lines = [entry(f"a{i}", MODEL, POLICY, None) for i in range(4)]  # 1 write, 3 reads
    lines += [entry(f"b{i}", MODEL, GLOSSARY, "1h") for i in range(2)]  # 1h: 1 write, 1 read
    lines += [entry(f"c{i}", OTHER, POLICY, None) for i in range(3)]  # another model
    lines.append(entry("d0", MODEL, "Be brief.", None))  # too short to be cached
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(map(msgspec.json.encode, lines)) + b"\n")
    async with (
        serve_emulator(
            EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "emu" if durable else None
        ) as emu,
        Client(api_key="test-key", base_url=emu.url) as client,
    ):
        pipeline = Pipeline(
            tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=CONFIG, client=client
        )
        with anyio.fail_after(30):
            stats = await pipeline.run()
    assert stats.outcomes == {"succeeded": 10}

    # What the results say, summed by hand per model, and priced by hand.
    usages: dict[str, list[dict[str, Any]]] = {}
    for raw in (tmp_path / "out.jsonl").read_bytes().splitlines():
        message = msgspec.json.decode(raw)["result"]["message"]
        usages.setdefault(message["model"], []).append(message["usage"])
    expected_cost = 0.0
    for model, found in usages.items():
        inputs = sum(u["input_tokens"] for u in found)
        outputs = sum(u["output_tokens"] for u in found)
        writes = sum(u.get("cache_creation_input_tokens") or 0 for u in found)
        reads = sum(u.get("cache_read_input_tokens") or 0 for u in found)
        hour = sum(
            (u.get("cache_creation") or {}).get("ephemeral_1h_input_tokens", 0) for u in found
        )
        price = DEFAULT_PRICES[model]
        by_hand = (
            inputs * price.input
            + (writes - hour) * price.input * 1.25
            + hour * price.input * 2.0
            + reads * price.input * 0.1
            + outputs * price.output
        ) / 1_000_000
        usage = stats.usage[model]
        assert (usage.input_tokens, usage.output_tokens) == (inputs, outputs)
        assert (usage.cache_creation_input_tokens, usage.cache_read_input_tokens) == (writes, reads)
        assert usage.cost_usd == pytest.approx(by_hand, rel=1e-12)
        assert cost_usd(
            model,
            inputs,
            outputs,
            cache_creation_input_tokens=writes,
            cache_read_input_tokens=reads,
            cache_creation_1h_input_tokens=hour,
        ) == pytest.approx(by_hand, rel=1e-12)
        expected_cost += by_hand
        text = render_summary(stats)
        assert (
            f"{model}: {inputs:,} in / {outputs:,} out · cache {writes:,} written / {reads:,} read"
            in text
        )
    assert stats.actual_cost_usd == pytest.approx(expected_cost, rel=1e-12)
    assert "cache writes 1.25x input (1 h TTL: 2x), reads 0.1x" in render_summary(stats)

    # The cache itself: per prefix (and model) one write, the rest read.
    def per(prefix: str) -> list[tuple[int, int]]:
        return sorted(
            (u.get("cache_read_input_tokens") or 0, u.get("cache_creation_input_tokens") or 0)
            for model, found in usages.items()
            for u, cid in zip(found, ids[model], strict=True)
            if cid.startswith(prefix)
        )

    ids: dict[str, list[str]] = {}
    for raw in (tmp_path / "out.jsonl").read_bytes().splitlines():
        line = msgspec.json.decode(raw)
        ids.setdefault(line["result"]["message"]["model"], []).append(line["custom_id"])
    policy = per("a")[0][1]
    assert policy > 1024
    assert per("a") == [(0, policy)] + [(policy, 0)] * 3
    glossary = per("b")[0][1]
    assert per("b") == [(0, glossary), (glossary, 0)]
    assert per("c") == [(0, policy)] + [(policy, 0)] * 2
    assert per("d") == [(0, 0)]
    assert stats.usage[MODEL].cache_read_input_tokens == 3 * policy + glossary
    assert stats.usage[MODEL].cache_creation_input_tokens == policy + glossary


@pytest.mark.parametrize("dry_run", ["off", "on"])  # estimated from the bytes, or measured
async def test_the_estimate_bounds_a_job_that_writes_every_prompt_to_the_cache(
    tmp_path: Path, dry_run: str
) -> None:
    # every request writes its own long prefix with the 1-hour TTL (2x input) and asks
    # for little output: priced as plain input, the estimate fell short of the cost
    lines = [entry(f"w{i}", MODEL, f"Case {i}. " + GLOSSARY, "1h") for i in range(6)]
    lines += [entry(f"f{i}", MODEL, f"Case {i}. " + POLICY, None) for i in range(6)]
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(map(msgspec.json.encode, lines)) + b"\n")
    config = msgspec.structs.replace(CONFIG, dry_run=dry_run)
    async with (
        serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu,
        Client(api_key="test-key", base_url=emu.url) as client,
    ):
        pipeline = Pipeline(
            tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=config, client=client
        )
        with anyio.fail_after(30):
            stats = await pipeline.run()
    assert stats.outcomes == {"succeeded": 12}
    writes = stats.usage[MODEL].cache_creation_input_tokens
    assert writes > 10 * stats.usage[MODEL].input_tokens  # the cache took nearly all input
    assert stats.actual_cost_usd <= stats.estimated_cost_usd
