"""One line must never fail the job (issue 14, items 5 and 6): a line nested too deep
for any decoder, or with a ``max_tokens`` no service accepts, is a reject of its own
line, and the job goes on. Through the public API: the validate stage, a whole job on
the embedded emulator, and the ledger's cost estimate."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline import Pipeline, PipelineConfig, SQLiteLedger, estimate_cost_usd
from pipeline.ledger import JobSpec
from pipeline.stages import Entry, Flush, RawLine, Reject, validate

if TYPE_CHECKING:
    from pathlib import Path

HAIKU = "claude-3-haiku-20240307"
#: a model whose own output cap this package does not know: only the 32-bit bound holds
SONNET_4 = "claude-sonnet-4-20250514"
FAST = PipelineConfig(
    max_batch_requests=50,
    max_in_flight=200,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
)
#: the depth a line may have, as the README states it
MAX_DEPTH = 100


def params(**extra: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": HAIKU,
        "max_tokens": 16,
        "messages": [{"role": "user", "content": "hello"}],
    }
    base.update(extra)
    return base


def line(cid: str, **extra: Any) -> bytes:
    return msgspec.json.encode({"custom_id": cid, "params": params(**extra)})


def nested(levels: int) -> bytes:
    """A JSON value ``levels`` deep: arrays in an object."""
    return b'{"x":' + b"[" * (levels - 1) + b"]" * (levels - 1) + b"}"


def deep_lines(levels: int) -> dict[str, bytes]:
    """Lines nested ``levels`` levels deep (the line's object is level 1) in every
    place a user's JSON goes free-form: outside params, in metadata, in a tool's schema,
    in a tool_use input; and a bare array."""
    simple_tool = b'{"name":"t","input_schema":{"type":"object"}}'
    deep_tool = b'{"name":"t","input_schema":{"type":"object","properties":%s}}'
    head = b'{"custom_id":"%s","params":{"model":"' + HAIKU.encode() + b'","max_tokens":16,'
    ask = b'"messages":[{"role":"user","content":"q"}]'
    use = (
        b'"messages":[{"role":"user","content":"q"},{"role":"assistant","content":'
        b'[{"type":"tool_use","id":"u1","name":"t","input":%s}]},{"role":"user","content":'
        b'[{"type":"tool_result","tool_use_id":"u1","content":"a"}]}]'
    )
    return {
        # the value's own level, then as many more as it nests
        "outside": b'{"custom_id":"outside","extra":%s,"params":{}}' % nested(levels - 1),
        "metadata": head % b"metadata" + ask + b',"metadata":%s}}' % nested(levels - 2),
        "tool-schema": head % b"tool-schema"
        + ask
        + b',"tools":[%s]}}' % (deep_tool % nested(levels - 5)),
        "tool-input": head % b"tool-input"
        + b'"tools":[%s],' % simple_tool
        + use % nested(levels - 6)
        + b"}}",
        "array": b"[" * levels + b"]" * levels,
    }


async def check(lines: list[bytes]) -> list[Entry | Reject]:
    """What the validate stage makes of ``lines`` (numbered from 1)."""
    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    out_send, out_receive = anyio.create_memory_object_stream[list[Entry | Reject | Flush]](10)
    got: list[Entry | Reject] = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: validate(receive, out_send, config=FAST, models=None))
        async with send:
            await send.send([RawLine(i, data, -1) for i, data in enumerate(lines, 1)])
        async with out_receive:
            async for items in out_receive:
                got += [i for i in items if not isinstance(i, Flush)]
    return got


@pytest.mark.parametrize("levels", [MAX_DEPTH + 1, 2_000, 200_000])
async def test_a_line_nested_too_deep_is_rejected_as_invalid_json_with_its_depth(
    levels: int,
) -> None:
    cases = deep_lines(levels)
    got = await check([line("before"), *cases.values(), line("after")])
    assert [type(i) for i in got] == [Entry, *[Reject] * len(cases), Entry]
    for name, reject in zip(cases, got[1:-1], strict=True):
        assert isinstance(reject, Reject)
        assert reject.error.type == "invalid_json", (name, reject.error)
        assert f"nested {levels:,} levels deep" in reject.error.message, (name, reject.error)
        assert f"{MAX_DEPTH} levels at most" in reject.error.message
        # the custom_id, where the line starts with it (no decoder may read the rest)
        assert reject.custom_id == (None if name == "array" else name)
        assert reject.line == list(cases).index(name) + 2


async def test_lines_nested_as_deep_as_allowed_run_on_the_embedded_emulator(
    tmp_path: Path,
) -> None:
    # Exactly MAX_DEPTH levels: accepted here, sent, and answered (the emulator's own
    # decode and checks take them too); one level more is a reject of its line.
    allowed = {k: v for k, v in deep_lines(MAX_DEPTH).items() if k.startswith("tool-")}
    refused = deep_lines(MAX_DEPTH + 1)
    good = [line(f"g-{i}") for i in range(5)]
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join([*good, *allowed.values(), *refused.values()]) + b"\n")
    pipeline = Pipeline(source, tmp_path / "out.jsonl", config=FAST, emulator_dir=tmp_path / "e")
    with anyio.fail_after(60):
        stats = await pipeline.run()
    assert stats.finished
    results = {
        r["custom_id"]: r["result"]["type"]
        for r in map(msgspec.json.decode, (tmp_path / "out.jsonl").read_bytes().splitlines())
    }
    assert results == {
        **{f"g-{i}": "succeeded" for i in range(5)},
        "tool-schema": "succeeded",
        "tool-input": "succeeded",
    }
    rejects = [
        msgspec.json.decode(x) for x in (tmp_path / "out.rejects.jsonl").read_bytes().splitlines()
    ]
    assert sorted(r["line"] for r in rejects) == list(range(8, 8 + len(refused)))
    assert {r["error"]["type"] for r in rejects} == {"invalid_json"}


@pytest.mark.parametrize(
    ("model", "max_tokens"),
    [
        pytest.param(SONNET_4, 10**16, id="1e16"),
        pytest.param(SONNET_4, 2**31, id="2**31"),
        pytest.param(SONNET_4, 10**400, id="1e400"),  # not even a float
        pytest.param(HAIKU, 10**16, id="1e16-past-the-model-cap"),
    ],
)
async def test_a_max_tokens_no_service_accepts_is_rejected_naming_the_field(
    model: str, max_tokens: int
) -> None:
    got = await check([line("huge", model=model, max_tokens=max_tokens), line("after")])
    reject, after = got
    assert isinstance(reject, Reject)
    assert isinstance(after, Entry)
    assert reject.line == 1
    assert reject.custom_id == "huge"
    assert reject.error.type == "invalid_request_error"
    assert reject.error.message.startswith(f"params.max_tokens: {max_tokens} > ")


async def test_the_largest_32_bit_max_tokens_is_accepted_where_no_cap_is_known() -> None:
    (entry,) = await check([line("big", model=SONNET_4, max_tokens=2**31 - 1)])
    assert isinstance(entry, Entry)
    assert entry.max_tokens == 2**31 - 1
    assert math.isfinite(entry.cost_usd)
    assert entry.cost_usd == estimate_cost_usd(SONNET_4, entry.input_tokens, 2**31 - 1)


async def test_a_huge_max_tokens_fails_nothing_on_the_embedded_emulator(tmp_path: Path) -> None:
    lines = [line(f"g-{i}") for i in range(4)]
    lines.insert(2, line("huge", model=SONNET_4, max_tokens=10**16))
    source = tmp_path / "in.jsonl"
    source.write_bytes(b"\n".join(lines) + b"\n")
    pipeline = Pipeline(source, tmp_path / "out.jsonl", config=FAST, emulator_dir=tmp_path / "e")
    with anyio.fail_after(60):
        stats = await pipeline.run()
    assert stats.finished
    assert stats.written == 4
    (reject,) = map(msgspec.json.decode, (tmp_path / "out.rejects.jsonl").read_bytes().splitlines())
    assert (reject["line"], reject["custom_id"]) == (3, "huge")
    assert "params.max_tokens" in reject["error"]["message"]


async def test_an_estimate_past_any_integer_is_stored_without_overflow(tmp_path: Path) -> None:
    # Entries made by code of the user's own (not through validate) may carry any
    # estimate; the ledger's running total must take it, as it takes a budget's.
    job = JobSpec(input_path=None, input_fingerprint=None, output_path="o", rejects_path=None)
    raw = line("x")
    costs = [1e30, math.inf, 2.5]
    async with SQLiteLedger(tmp_path / "state") as ledger:
        await ledger.open(job)
        for n, cost in enumerate(costs, 1):
            entry = Entry(line=n, custom_id=f"c{n}", raw=raw, cost_usd=cost)
            await ledger.claim([entry], [], checkpoint=-1, line=n)
        status = await ledger.status()
    assert status.estimated_cost_usd > 1e9
    assert math.isfinite(status.estimated_cost_usd)
