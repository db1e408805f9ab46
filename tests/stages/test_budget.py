"""The spend guard stops submission at the first entry over budget."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest

from pipeline._config import PipelineConfig
from pipeline._errors import UnpricedModelError
from pipeline._pricing import DEFAULT_PRICES, PriceTable, estimate_cost_usd
from pipeline.api._schema import approx_input_tokens
from pipeline.stages._items import Entry, Flush, Reject, RejectError, Watermark
from pipeline.stages.budget import SpendMeter, entry_cost_usd, spend_guard

if TYPE_CHECKING:
    from pipeline._errors import BudgetExceededError

Item = Entry | Reject | Flush
MODEL = "claude-3-opus-20240229"
# 1,000 input tokens and 1,000 max output tokens: $0.0075 + $0.0375 = $0.045 per entry
COST = estimate_cost_usd(MODEL, 1_000, 1_000)


def make_entry(line: int, **fields: object) -> Entry:
    entry = Entry(line, f"r{line}", b"{}", offset=line * 10, end=line * 10 + 10, model=MODEL)
    entry.max_tokens = 1_000
    entry.input_tokens = 1_000
    for name, value in fields.items():
        setattr(entry, name, value)
    return entry


async def run_guard(
    batches: list[list[Item]],
    config: PipelineConfig,
    meter: SpendMeter,
    *,
    prices: PriceTable = DEFAULT_PRICES,
) -> tuple[list[Item], list[BudgetExceededError], int]:
    """Run the guard; return what it sent, what it reported, and how many batches the
    source managed to send before the guard stopped reading."""
    send_in, recv_in = anyio.create_memory_object_stream[list[Item]](0)
    send_out, recv_out = anyio.create_memory_object_stream[list[Item]](100)
    out: list[Item] = []
    exceeded: list[BudgetExceededError] = []
    sent = 0

    async def source() -> None:
        nonlocal sent
        async with send_in:
            for batch in batches:
                try:
                    await send_in.send(batch)
                except anyio.BrokenResourceError:
                    return  # the guard stopped reading: the source stops
                sent += 1

    async with anyio.create_task_group() as tg:
        tg.start_soon(source)
        tg.start_soon(
            partial(
                spend_guard,
                recv_in,
                send_out,
                config=config,
                on_exceeded=exceeded.append,
                meter=meter,
                prices=prices,
            )
        )
        async with recv_out:
            async for batch in recv_out:
                out.extend(batch)
    return out, exceeded, sent


async def test_stops_at_the_first_entry_over_budget() -> None:
    meter = SpendMeter()
    batches: list[list[Item]] = [[make_entry(n) for n in range(i, i + 4)] for i in range(0, 40, 4)]
    batches[1].insert(1, Reject(5, "x", RejectError("invalid_request_error", "bad")))
    budget = COST * 10.5  # room for 10 entries
    out, exceeded, sent = await run_guard(batches, PipelineConfig(budget_usd=budget), meter)

    entries = [i for i in out if isinstance(i, Entry)]
    assert [e.line for e in entries] == list(range(10))  # entry 10 is the one refused
    assert isinstance(out[-1], Flush)
    assert out[-1].final
    assert out[-1].end == 100  # the refused entry's start: a resume starts there
    assert sum(isinstance(i, Reject) for i in out) == 1
    [error] = exceeded
    assert error.budget_usd == budget
    assert error.estimated_usd == pytest.approx(COST * 11)
    assert sent < len(batches)  # the source was stopped
    stats = meter.statistics()
    assert stats.stopped
    assert stats.passed == 10
    assert stats.estimated_cost_usd == pytest.approx(COST * 10)


async def test_a_total_equal_to_the_budget_is_within_it() -> None:
    meter = SpendMeter()
    batches: list[list[Item]] = [[make_entry(n) for n in range(5)]]
    out, exceeded, _ = await run_guard(batches, PipelineConfig(budget_usd=COST * 3), meter)
    assert [i.line for i in out if isinstance(i, Entry)] == [0, 1, 2]
    assert len(exceeded) == 1


async def test_no_budget_only_counts() -> None:
    meter = SpendMeter()
    batches: list[list[Item]] = [[make_entry(n) for n in range(5)], [Flush(end=50, final=True)]]
    out, exceeded, sent = await run_guard(batches, PipelineConfig(), meter)
    assert out == batches[0] + batches[1]
    assert exceeded == []
    assert sent == 2
    assert meter.statistics().estimated_cost_usd == pytest.approx(COST * 5)


async def test_without_a_budget_unpriced_models_pass_and_are_listed() -> None:
    meter = SpendMeter()
    batches: list[list[Item]] = [[make_entry(n, model="my-model") for n in range(5)]]
    out, exceeded, _ = await run_guard(batches, PipelineConfig(), meter)
    assert len(out) == 5
    assert not exceeded
    assert meter.statistics().unpriced_models == ("my-model",)


async def test_a_budget_stops_at_the_first_model_it_cannot_price() -> None:
    # a cost the table cannot estimate is not let through as $0: the guard stops
    # before it as at the budget, naming the model and how to price it
    meter = SpendMeter()
    priced = [make_entry(n) for n in range(1, 3)]
    batches: list[list[Item]] = [[*priced, make_entry(3, model="claude-x"), make_entry(4)]]
    out, exceeded, _ = await run_guard(batches, PipelineConfig(budget_usd=100.0), meter)
    assert out[:2] == priced
    assert out[2] == Watermark(end=30, line=2, stop=True)
    assert out[3] == Flush(end=30, final=True)
    assert len(out) == 4
    [error] = exceeded
    assert isinstance(error, UnpricedModelError)
    assert error.model == "claude-x"
    assert (error.line, error.custom_id) == (3, "r3")
    assert str(error) == (
        "budget $100.00 cannot be enforced: no batch price for model 'claude-x' (line 3, "
        "custom_id 'r3'); give its prices with --price claude-x=INPUT,OUTPUT (USD per "
        "million tokens at batch price; prices= in Python) and re-run"
    )
    stats = meter.statistics()
    assert stats.stopped
    assert stats.estimated_cost_usd == pytest.approx(COST * 2)


async def test_a_price_given_for_the_model_lets_it_through() -> None:
    prices = DEFAULT_PRICES.with_prices({"claude-x": (1.0, 2.0)})
    meter = SpendMeter()
    batches: list[list[Item]] = [[make_entry(n, model="claude-x") for n in range(1, 4)]]
    out, exceeded, _ = await run_guard(
        batches, PipelineConfig(budget_usd=100.0), meter, prices=prices
    )
    assert out == batches[0]
    assert not exceeded
    assert meter.statistics().estimated_cost_usd == pytest.approx(3 * (1_000 + 2_000) / 1e6)


def test_entry_cost_prefers_the_measured_estimate() -> None:
    assert entry_cost_usd(make_entry(0, cost_usd=1.25)) == 1.25
    raw = msgspec.json.encode({"custom_id": "a", "params": {"x": "y" * 300}})
    entry = make_entry(0, raw=raw, input_tokens=-1)
    assert entry_cost_usd(entry) == pytest.approx(
        estimate_cost_usd(MODEL, approx_input_tokens(raw), 1_000)
    )
    assert entry.input_tokens == approx_input_tokens(raw)
