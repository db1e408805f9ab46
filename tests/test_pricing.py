"""Batch prices and cost estimates."""

from __future__ import annotations

import pytest

from pipeline._pricing import (
    DEFAULT_PRICES,
    Price,
    cost_usd,
    estimate_cost_usd,
)
from pipeline.api._schema import KNOWN_MODELS
from pipeline.stages._items import Entry, RawLine
from pipeline.stages.validate import Validator


@pytest.mark.parametrize(
    ("model", "price"),
    [
        ("claude-3-5-sonnet-20240620", Price(1.50, 7.50)),
        ("claude-3-5-sonnet-20241022", Price(1.50, 7.50)),
        ("claude-3-opus-20240229", Price(7.50, 37.50)),
        ("claude-3-haiku-20240307", Price(0.125, 0.625)),
        ("claude-3-5-haiku-20241022", Price(0.40, 2.00)),
        # later models, from the batch price table and the model pages of the docs
        ("claude-sonnet-4-20250514", Price(1.50, 7.50)),
        ("claude-opus-4-1-20250805", Price(7.50, 37.50)),
        ("claude-haiku-4-5", Price(0.50, 2.50)),
        ("claude-opus-4-5", Price(2.50, 12.50)),
        # 2026 models, from their model pages
        ("claude-opus-5-5", Price(2.00, 10.00)),
        ("claude-sonnet-5-5", Price(1.00, 5.00)),
        ("claude-opus-4-8", Price(2.50, 12.50)),
        ("claude-fable-5-1", Price(5.00, 25.00)),
    ],
)
def test_batch_prices_are_half_the_standard_ones(model: str, price: Price) -> None:
    assert DEFAULT_PRICES[model] == price


def test_every_priced_model_is_one_the_emulator_accepts_and_aliases_cost_the_same() -> None:
    assert set(DEFAULT_PRICES) <= KNOWN_MODELS
    aliases = {
        "claude-opus-4-1": "claude-opus-4-1-20250805",
        "claude-opus-4-0": "claude-opus-4-20250514",
        "claude-sonnet-4-0": "claude-sonnet-4-20250514",
        "claude-3-7-sonnet-latest": "claude-3-7-sonnet-20250219",
        "claude-3-5-haiku-latest": "claude-3-5-haiku-20241022",
        "claude-sonnet-4-5": "claude-sonnet-4-5-20250929",
        "claude-haiku-4-5": "claude-haiku-4-5-20251001",
        "claude-opus-4-5": "claude-opus-4-5-20251101",
    }
    for alias, model in aliases.items():
        assert DEFAULT_PRICES[alias] == DEFAULT_PRICES[model], alias
    # a tiered price is not one number: left to --price, which a budget then asks for
    assert "claude-haiku-5-5" in KNOWN_MODELS
    assert "claude-haiku-5-5" not in DEFAULT_PRICES


def test_estimate_bounds_output_by_max_tokens() -> None:
    # 1M input at $1.50 + 2,000 output tokens at $7.50/M
    assert estimate_cost_usd("claude-3-5-sonnet-20241022", 1_000_000, 2_000) == pytest.approx(
        1.50 + 0.015
    )
    assert estimate_cost_usd("claude-3-haiku-20240307", 8_000, 0) == pytest.approx(0.001)


def test_actual_cost_with_cache_tokens() -> None:
    assert cost_usd("claude-3-opus-20240229", 1_000, 500) == pytest.approx(
        (1_000 * 7.5 + 500 * 37.5) / 1e6
    )
    cached = cost_usd(
        "claude-3-opus-20240229",
        0,
        0,
        cache_creation_input_tokens=1_000_000,
        cache_read_input_tokens=1_000_000,
    )
    assert cached == pytest.approx(7.5 * 1.25 + 7.5 * 0.1)


def test_unknown_models_cost_nothing_and_are_reported() -> None:
    assert estimate_cost_usd("my-model", 1_000, 1_000) == 0.0
    assert cost_usd("my-model", 1_000, 1_000) == 0.0
    assert DEFAULT_PRICES.unknown(["my-model", "claude-3-opus-20240229"]) == {"my-model"}


def test_users_extend_the_table_without_changing_the_default() -> None:
    prices = DEFAULT_PRICES.with_prices(
        {"my-model": (1.0, 2.0), "claude-3-opus-20240229": Price(1, 1)}
    )
    assert estimate_cost_usd("my-model", 1_000_000, 1_000_000, prices=prices) == 3.0
    assert prices["claude-3-opus-20240229"] == Price(1, 1)
    assert "my-model" not in DEFAULT_PRICES
    assert len(prices) == len(DEFAULT_PRICES) + 1
    with pytest.raises(ValueError, match="prices must be >= 0"):
        Price(-1, 0)


@pytest.mark.parametrize("table", ["default", "user"])
def test_the_validate_stage_prices_entries_as_estimate_cost_usd_does(table: str) -> None:
    # the stage prices inline from its own per-model rates: the same floats, exactly
    prices = DEFAULT_PRICES
    if table == "user":
        prices = DEFAULT_PRICES.with_prices(
            {"my-model": (0.3, 1.7), "claude-3-opus-20240229": (3, 7)}
        )
    models = ["claude-3-haiku-20240307", "claude-3-opus-20240229", "my-model", "unpriced-model"]
    lines = [
        RawLine(
            i + 1,
            b'{"custom_id":"c%d","params":{"model":"%s","max_tokens":%d,'
            b'"messages":[{"role":"user","content":"%s"}]}}'
            % (i, model.encode(), 7 + 1000 * i, b"x" * (1 + 13 * i)),
            -1,
        )
        for i, model in enumerate(models)
    ]
    entries = Validator(models=None, prices=prices).check(lines)
    assert all(isinstance(e, Entry) for e in entries)
    for entry in entries:
        assert isinstance(entry, Entry)
        expected = estimate_cost_usd(
            entry.model, entry.input_tokens, entry.max_tokens, prices=prices
        )
        assert entry.cost_usd == expected
        assert (entry.cost_usd == 0.0) == (entry.model not in prices)
