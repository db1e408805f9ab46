"""Prompt-cache usage through the official SDK, unmodified, over a real loopback
server: a prefix up to a ``cache_control`` breakpoint is written the first time,
read while its TTL lasts (in virtual time), written again after; per workspace and
model; in Messages and in batch results alike."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anthropic
import pytest

from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anthropic.types import Usage

    from pipeline.testing import EmulatorHandle

MODEL = "claude-sonnet-4-6"
KEY = "sk-ant-cache-key"
#: well over the 1024-token minimum (about 4 bytes a token)
POLICY = "Answer as the house style guide says, in full sentences. " * 120
MINUTE = 60.0


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[EmulatorHandle]:
    config = EmulatorConfig(batch_seconds=10.0, clock=ManualClock())
    async with serve_emulator(config, data_dir=tmp_path) as handle:
        yield handle


@pytest.fixture
async def sdk(emu: EmulatorHandle) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key=KEY, base_url=emu.url, max_retries=0) as client:
        yield client


def system(text: str = POLICY, ttl: str | None = None) -> list[dict[str, Any]]:
    control: dict[str, Any] = {"type": "ephemeral"}
    if ttl:
        control["ttl"] = ttl
    return [{"type": "text", "text": text, "cache_control": control}]


async def ask(client: anthropic.AsyncAnthropic, question: str = "q1", **params: Any) -> Usage:
    params.setdefault("system", system())
    params.setdefault("model", MODEL)
    message = await client.messages.create(
        max_tokens=16, messages=[{"role": "user", "content": question}], **params
    )
    return message.usage


def cache(usage: Usage) -> tuple[int, int, int, int]:
    """(read, written, written 5m, written 1h)."""
    assert usage.cache_creation is not None
    return (
        usage.cache_read_input_tokens or 0,
        usage.cache_creation_input_tokens or 0,
        usage.cache_creation.ephemeral_5m_input_tokens,
        usage.cache_creation.ephemeral_1h_input_tokens,
    )


async def test_written_then_read_within_the_ttl(
    emu: EmulatorHandle, sdk: anthropic.AsyncAnthropic
) -> None:
    first = await ask(sdk)
    read, written, five, hour = cache(first)
    assert (read, hour) == (0, 0)
    assert written == five > 1024
    total = (
        await sdk.messages.count_tokens(
            model=MODEL, system=system(), messages=[{"role": "user", "content": "q2"}]
        )
    ).input_tokens
    second = await ask(sdk, "q2")
    assert cache(second) == (written, 0, 0, 0)
    assert second.input_tokens + written == total  # the rest of the prompt is plain input
    emu.advance(4 * MINUTE)
    assert cache(await ask(sdk, "q3"))[0] == written  # a read renews the 5 minutes
    emu.advance(4 * MINUTE)
    assert cache(await ask(sdk, "q4"))[0] == written
    emu.advance(5 * MINUTE + 1)
    assert cache(await ask(sdk, "q5")) == (0, written, written, 0)  # expired: written again


async def test_workspace_model_and_content_each_make_their_own_prefix(
    emu: EmulatorHandle, sdk: anthropic.AsyncAnthropic
) -> None:
    written = cache(await ask(sdk))[1]
    async with anthropic.AsyncAnthropic(
        api_key="sk-ant-another-workspace", base_url=emu.url, max_retries=0
    ) as other:
        assert cache(await ask(other)) == (0, written, written, 0)
    assert cache(await ask(sdk, model="claude-opus-4-7"))[:2] == (0, written)
    changed = await ask(sdk, system=system(POLICY + " And be kind."))
    assert cache(changed)[0] == 0
    assert cache(await ask(sdk))[:2] == (written, 0)


async def test_one_hour_ttl_and_several_breakpoints(
    emu: EmulatorHandle, sdk: anthropic.AsyncAnthropic
) -> None:
    tools: list[Any] = [
        {
            "name": "lookup",
            "description": "Looks a word up in the style guide. " * 150,
            "input_schema": {"type": "object", "properties": {"word": {"type": "string"}}},
            "cache_control": {"type": "ephemeral", "ttl": "1h"},
        }
    ]
    first = cache(await ask(sdk, tools=tools))
    tools_part, all_parts = first[3], first[1]
    assert first[0] == 0
    assert 1024 < tools_part < all_parts
    assert first[2] == all_parts - tools_part  # the system part, at 5 minutes
    emu.advance(6 * MINUTE)  # the 5-minute part is gone, the 1-hour part is not
    assert cache(await ask(sdk, tools=tools)) == (
        tools_part,
        all_parts - tools_part,
        all_parts - tools_part,
        0,
    )
    emu.advance(61 * MINUTE)
    assert cache(await ask(sdk, tools=tools)) == (0, all_parts, all_parts - tools_part, tools_part)


async def test_a_prefix_under_the_minimum_is_not_cached(sdk: anthropic.AsyncAnthropic) -> None:
    for _ in range(2):
        assert cache(await ask(sdk, system=system("Be brief."))) == (0, 0, 0, 0)
    haiku = "claude-haiku-4-5"  # 2048 tokens at least: the policy is shorter
    assert cache(await ask(sdk, model=haiku)) == (0, 0, 0, 0)


async def test_top_level_cache_control_marks_the_last_block(
    sdk: anthropic.AsyncAnthropic,
) -> None:
    long_question = "Which rule applies here? " * 200
    params: dict[str, Any] = {
        "system": POLICY,
        "extra_body": {"cache_control": {"type": "ephemeral"}},
    }
    first = cache(await ask(sdk, long_question, **params))
    assert first[0] == 0
    assert first[1] > 1024
    assert cache(await ask(sdk, long_question, **params))[:2] == (first[1], 0)


async def test_the_cache_is_bounded(tmp_path: Path) -> None:
    config = EmulatorConfig(clock=ManualClock(), prompt_cache_entries=3)
    async with (
        serve_emulator(config, data_dir=tmp_path) as emu,
        anthropic.AsyncAnthropic(api_key=KEY, base_url=emu.url, max_retries=0) as sdk,
    ):
        texts = [f"{n} " + POLICY for n in range(4)]
        for text in texts:
            assert cache(await ask(sdk, system=system(text)))[0] == 0
        assert len(emu.state.cache) == 3
        assert cache(await ask(sdk, system=system(texts[3])))[0] > 0  # recent: still there
        assert cache(await ask(sdk, system=system(texts[0])))[0] == 0  # oldest: dropped


async def test_batch_results_report_cache_reads(
    emu: EmulatorHandle, sdk: anthropic.AsyncAnthropic
) -> None:
    written = cache(await ask(sdk, system=system(ttl="1h")))[1]
    emu.advance(2 * 3600)  # expired by the time the batch runs
    requests: list[Any] = [
        {
            "custom_id": f"r{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 16,
                "system": system(ttl="1h"),
                "messages": [{"role": "user", "content": f"question {i}"}],
            },
        }
        for i in range(4)
    ]
    batch = await sdk.messages.batches.create(requests=requests)
    emu.advance(11)
    assert (await sdk.messages.batches.retrieve(batch.id)).processing_status == "ended"
    usages = [
        line.result.message.usage
        async for line in await sdk.messages.batches.results(batch.id)
        if line.result.type == "succeeded"
    ]
    assert len(usages) == 4
    assert all(u.service_tier == "batch" for u in usages)
    # one request writes the prefix, the three others read it
    assert sorted(cache(u) for u in usages) == [(0, written, 0, written)] + [(written, 0, 0, 0)] * 3
    emu.advance(50 * MINUTE)  # within the hour of the batch's processing
    assert cache(await ask(sdk, system=system(ttl="1h")))[:2] == (written, 0)
