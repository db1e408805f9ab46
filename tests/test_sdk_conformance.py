"""The official ``anthropic`` SDK, unmodified, against the emulator over loopback.

It is an independent client of our wire format: everything it sends must be
accepted, everything we answer must decode into its types, and each bad call must
raise its matching exception class.
"""

from __future__ import annotations

import importlib
from collections import Counter
from typing import TYPE_CHECKING, Any

import anthropic
import pytest

from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterator
    from pathlib import Path

    from pipeline.testing import EmulatorHandle

MODEL = "claude-3-haiku-20240307"
KEY = "sk-ant-conformance-key"
# How a cut results download reaches an SDK user: the SDK's connection error (2.17+ wraps
# the transport's) or the transport's RemoteProtocolError itself (earlier 2.x let it through).
BROKEN_STREAM = (
    anthropic.APIConnectionError,
    importlib.import_module("httpx2").RemoteProtocolError,
)
DAY = 86400.0


def causes(exc: BaseException | None) -> Iterator[BaseException]:
    """The exception and the ones it was raised from, outermost first."""
    while exc is not None:
        yield exc
        exc = exc.__cause__ or exc.__context__


def requests(n: int, prefix: str = "r") -> list[dict[str, Any]]:
    return [
        {
            "custom_id": f"{prefix}{i}",
            "params": {
                "model": MODEL,
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"question {i}"}],
            },
        }
        for i in range(n)
    ]


@pytest.fixture
async def emu(tmp_path: Path) -> AsyncIterator[EmulatorHandle]:
    config = EmulatorConfig(batch_seconds=100.0, clock=ManualClock(), max_batch_bytes=20_000)
    async with serve_emulator(config, data_dir=tmp_path) as handle:
        yield handle


@pytest.fixture
async def sdk(emu: EmulatorHandle) -> AsyncIterator[anthropic.AsyncAnthropic]:
    async with anthropic.AsyncAnthropic(api_key=KEY, base_url=emu.url, max_retries=0) as client:
        yield client


@pytest.mark.parametrize("beta", [False, True])
async def test_batch_round_trip(
    emu: EmulatorHandle, sdk: anthropic.AsyncAnthropic, beta: bool
) -> None:
    batches: Any = sdk.beta.messages.batches if beta else sdk.messages.batches
    extra: dict[str, Any] = {"betas": ["message-batches-2024-09-24"]} if beta else {}
    body = requests(4)
    body.append({"custom_id": "bad", "params": {**body[0]["params"], "model": "nope"}})
    created = await batches.create(requests=body, **extra)
    assert created.processing_status == "in_progress"
    assert created.request_counts.processing == 5
    assert created.created_at.tzinfo is not None
    with pytest.raises(anthropic.AnthropicError, match="results_url"):
        await batches.results(created.id)
    emu.advance(100)
    ended = await batches.retrieve(created.id, **extra)
    assert ended.processing_status == "ended"
    assert ended.results_url is not None
    assert ended.results_url.startswith(emu.url)
    assert ended.request_counts.succeeded == 4
    assert ended.request_counts.errored == 1
    results = {r.custom_id: r.result async for r in await batches.results(created.id)}
    assert set(results) == {"r0", "r1", "r2", "r3", "bad"}
    assert results["r0"].type == "succeeded"
    assert results["r0"].message.content[0].type == "text"
    assert results["r0"].message.usage.output_tokens > 0
    assert results["bad"].type == "errored"
    # an unknown model: the service's 404 type, in a batch as on the Messages endpoint
    assert results["bad"].error.error.type == "not_found_error"
    assert results["bad"].error.error.message == "model: nope"
    deleted = await batches.delete(created.id, **extra)
    assert deleted.id == created.id
    assert deleted.type == "message_batch_deleted"
    with pytest.raises(anthropic.NotFoundError):
        await batches.retrieve(created.id)


async def test_list_auto_pagination(emu: EmulatorHandle, sdk: anthropic.AsyncAnthropic) -> None:
    ids = [(await sdk.messages.batches.create(requests=requests(1))).id for _ in range(5)]
    listed = [b.id async for b in sdk.messages.batches.list(limit=2)]
    assert listed == ids[::-1]
    beta_listed = [b.id async for b in sdk.beta.messages.batches.list(limit=3)]
    assert beta_listed == ids[::-1]
    page = await sdk.messages.batches.list(limit=2, before_id=ids[0])
    assert [b.id for b in page.data] == [ids[2], ids[1]]


async def test_canceled_and_expired_lines(
    emu: EmulatorHandle, sdk: anthropic.AsyncAnthropic
) -> None:
    canceled = await sdk.messages.batches.create(requests=requests(4, "c"))
    emu.advance(50)  # half of it processed
    canceling = await sdk.messages.batches.cancel(canceled.id)
    assert canceling.processing_status == "canceling"
    assert canceling.cancel_initiated_at is not None
    types = Counter([r.result.type async for r in await sdk.messages.batches.results(canceled.id)])
    assert types == {"succeeded": 2, "canceled": 2}

    async with serve_emulator(EmulatorConfig(batch_seconds=2 * DAY, clock=ManualClock())) as slow:
        async with anthropic.AsyncAnthropic(api_key=KEY, base_url=slow.url) as client:
            expiring = await client.messages.batches.create(requests=requests(4, "e"))
            slow.advance(DAY)
            ended = await client.messages.batches.retrieve(expiring.id)
            assert ended.request_counts.expired == 2
            lines = [r async for r in await client.messages.batches.results(expiring.id)]
            assert Counter(r.result.type for r in lines) == {"succeeded": 2, "expired": 2}


async def test_typed_errors(emu: EmulatorHandle, sdk: anthropic.AsyncAnthropic) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        await sdk.messages.batches.create(requests=[*requests(1), *requests(1)])
    assert "duplicate" in bad.value.message
    assert bad.value.request_id is not None
    assert bad.value.request_id.startswith("req_")
    with pytest.raises(anthropic.BadRequestError):
        await sdk.messages.batches.create(requests=[])
    with pytest.raises(anthropic.BadRequestError):
        await sdk.messages.batches.create(requests=requests(1, prefix="bad id "))
    with pytest.raises(anthropic.ContentTooLargeError):
        await sdk.messages.batches.create(requests=requests(200))
    with pytest.raises(anthropic.NotFoundError):
        await sdk.messages.batches.retrieve("msgbatch_000000000000000000000000")
    in_progress = await sdk.messages.batches.create(requests=requests(1))
    with pytest.raises(anthropic.BadRequestError):
        await sdk.messages.batches.delete(in_progress.id)
    with pytest.raises(anthropic.BadRequestError):
        await sdk.messages.batches.list(limit=0)
    no_key = {"Authorization": anthropic.Omit(), "X-Api-Key": anthropic.Omit()}
    async with anthropic.AsyncAnthropic(
        api_key=KEY, base_url=emu.url, default_headers=no_key, max_retries=0
    ) as anon:
        with pytest.raises(anthropic.AuthenticationError):
            await anon.messages.batches.list()
    async with anthropic.AsyncAnthropic(
        api_key="sk-other-workspace", base_url=emu.url, max_retries=0
    ) as other:
        with pytest.raises(anthropic.NotFoundError):
            await other.messages.batches.retrieve(in_progress.id)
        assert [b async for b in other.messages.batches.list()] == []


async def test_x_api_key_and_bearer_share_a_workspace(emu: EmulatorHandle) -> None:
    async with anthropic.AsyncAnthropic(
        api_key=KEY,
        base_url=emu.url,
        default_headers={"Authorization": anthropic.Omit(), "X-Api-Key": KEY},
    ) as legacy:
        created = await legacy.messages.batches.create(requests=requests(1))
    async with anthropic.AsyncAnthropic(api_key=KEY, base_url=emu.url) as bearer:
        assert (await bearer.messages.batches.retrieve(created.id)).id == created.id


async def test_messages_and_count_tokens(sdk: anthropic.AsyncAnthropic) -> None:
    message = await sdk.messages.create(
        model=MODEL, max_tokens=3, messages=[{"role": "user", "content": "hello"}]
    )
    assert message.stop_reason == "max_tokens"
    assert message.usage.output_tokens == 3
    count = await sdk.messages.count_tokens(
        model=MODEL, messages=[{"role": "user", "content": "hello"}]
    )
    assert count.input_tokens == message.usage.input_tokens
    forced = await sdk.messages.create(
        model=MODEL,
        max_tokens=100,
        messages=[{"role": "user", "content": "weather?"}],
        tools=[
            {
                "name": "weather",
                "input_schema": {
                    "type": "object",
                    "properties": {"city": {"type": "string"}},
                    "required": ["city"],
                },
            }
        ],
        tool_choice={"type": "tool", "name": "weather"},
    )
    assert forced.stop_reason == "tool_use"
    assert forced.content[0].type == "tool_use"
    assert set(forced.content[0].input) == {"city"}  # valid for the schema (the city is a word)
    assert isinstance(forced.content[0].input["city"], str)
    with pytest.raises(anthropic.NotFoundError, match="model: unknown-model"):
        await sdk.messages.create(
            model="unknown-model", max_tokens=3, messages=[{"role": "user", "content": "x"}]
        )
    with pytest.raises(anthropic.NotFoundError, match="model: unknown-model"):
        await sdk.messages.count_tokens(
            model="unknown-model", messages=[{"role": "user", "content": "x"}]
        )


async def test_fault_errors_are_typed(tmp_path: Path) -> None:
    config = EmulatorConfig(fault_rate=1.0, seed=2)
    seen: set[type[Exception]] = set()
    async with (
        serve_emulator(config, data_dir=tmp_path) as emu,
        anthropic.AsyncAnthropic(api_key=KEY, base_url=emu.url, max_retries=0) as client,
    ):
        for _ in range(12):
            try:
                await client.messages.batches.list()
            except anthropic.APIStatusError as exc:
                seen.add(type(exc))
    assert seen == {
        anthropic.RateLimitError,
        anthropic.InternalServerError,
        anthropic.OverloadedError,
    }


async def test_cut_download_reaches_the_sdk_as_a_broken_stream(tmp_path: Path) -> None:
    config = EmulatorConfig(batch_seconds=0.0, cut_rate=1.0)
    async with (
        serve_emulator(config, data_dir=tmp_path) as emu,
        anthropic.AsyncAnthropic(api_key=KEY, base_url=emu.url, max_retries=0) as client,
    ):
        created = await client.messages.batches.create(requests=requests(100))
        got = []
        # API_CONTRACT.md 7: a dropped download fails loudly, never retried. What users
        # rely on is a connection error that says the peer closed the connection, not its
        # wrapper: SDK 2.0-2.16 let the transport's RemoteProtocolError through, 2.17 wraps
        # it in APIConnectionError.
        with pytest.raises(BROKEN_STREAM) as info:
            got += [r async for r in await client.messages.batches.results(created.id)]
        assert "peer closed connection" in " ".join(map(str, causes(info.value)))
        assert len(got) < 100
