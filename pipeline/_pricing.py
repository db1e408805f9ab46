"""Batch prices per model and cost estimates, for the spend guard and the run summary.

Prices are the Message Batches API's (50% of the standard price), in US dollars per
million tokens. Users extend or override the table without touching this module::

    prices = DEFAULT_PRICES.with_prices({"my-model": Price(input=1.0, output=5.0)})

A model the table does not know costs 0: ``estimate_cost_usd`` and ``cost_usd``
cannot price it, so a budget does not count it. Check ``model in prices`` (or
``PriceTable.unknown``) to warn about it; the spend guard reports such models.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

import msgspec

__all__ = (
    "CACHE_READ_FACTOR",
    "CACHE_WRITE_1H_FACTOR",
    "CACHE_WRITE_FACTOR",
    "DEFAULT_PRICES",
    "Price",
    "PriceTable",
    "cache_write_factor",
    "cost_usd",
    "estimate_cost_usd",
    "whole_units",
)

_MILLION = 1_000_000
#: Prompt-cache writes cost 1.25x the input price with the 5-minute TTL, 2x with the
#: 1-hour TTL; cache reads 0.1x (the batch discount stacks: these multiply batch prices).
CACHE_WRITE_FACTOR = 1.25
CACHE_WRITE_1H_FACTOR = 2.0
CACHE_READ_FACTOR = 0.1


class Price(msgspec.Struct, frozen=True):
    """US dollars per million tokens of input and of output."""

    input: float
    output: float

    def __post_init__(self) -> None:
        if not (0 <= self.input < math.inf and 0 <= self.output < math.inf):
            raise ValueError(
                f"prices must be >= 0 and finite, got input={self.input} output={self.output}"
            )


class PriceTable(Mapping[str, Price]):
    """An immutable model -> ``Price`` mapping; ``with_prices`` returns an extended copy."""

    __slots__ = ("_prices", "_tuples")

    def __init__(self, prices: Mapping[str, Price] | None = None) -> None:
        self._prices: dict[str, Price] = dict(prices or {})
        # (input, output) per million tokens: the estimate's one dict lookup per entry
        self._tuples: dict[str, tuple[float, float]] = {
            model: (price.input, price.output) for model, price in self._prices.items()
        }

    def __getitem__(self, model: str) -> Price:
        return self._prices[model]

    def __iter__(self) -> Iterator[str]:
        return iter(self._prices)

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({self._prices!r})"

    def with_prices(
        self, prices: Mapping[str, Price | tuple[float, float]] | None = None, /
    ) -> PriceTable:
        """A copy with ``prices`` added or replaced; a price may be ``(input, output)``."""
        merged = dict(self._prices)
        for model, price in (prices or {}).items():
            merged[model] = price if isinstance(price, Price) else Price(*price)
        return PriceTable(merged)

    def unknown(self, models: Iterable[str]) -> set[str]:
        """The models among ``models`` this table cannot price."""
        return {m for m in models if m not in self._prices}

    def price_for(self, model: str) -> tuple[float, float] | None:
        """``(input, output)`` US dollars per million tokens of ``model``, or None when
        the table cannot price it: for callers that price many entries of one model."""
        return self._tuples.get(model)

    def rates(self) -> dict[str, tuple[float, float]]:
        """``price_for`` of every model, as a dict: for loops that price each entry
        inline, as ``(input_tokens * rate[0] + max_tokens * rate[1]) / 1_000_000``."""
        return dict(self._tuples)

    def estimate_cost_usd(
        self, model: str, input_tokens: int, max_tokens: int, *, input_factor: float = 1.0
    ) -> float:
        """Worst-case cost of one request: its input (times ``input_factor``, see
        ``cache_write_factor``) plus ``max_tokens`` of output."""
        price = self._tuples.get(model)
        if price is None:
            return 0.0
        return _estimate(price, input_tokens, max_tokens, input_factor)

    def cost_usd(
        self,
        model: str,
        input_tokens: int,
        output_tokens: int,
        *,
        cache_creation_input_tokens: int = 0,
        cache_read_input_tokens: int = 0,
        cache_creation_1h_input_tokens: int = 0,
    ) -> float:
        """The cost of actual usage, as a result's ``usage`` reports it.

        ``cache_creation_input_tokens`` is every cache write, of which
        ``cache_creation_1h_input_tokens`` (``usage.cache_creation``'s
        ``ephemeral_1h_input_tokens``) were written with the 1-hour TTL."""
        price = self._prices.get(model)
        if price is None:
            return 0.0
        hour = min(cache_creation_1h_input_tokens, cache_creation_input_tokens)
        inputs = (
            _tokens(input_tokens)
            + _tokens(cache_creation_input_tokens - hour) * CACHE_WRITE_FACTOR
            + _tokens(hour) * CACHE_WRITE_1H_FACTOR
            + _tokens(cache_read_input_tokens) * CACHE_READ_FACTOR
        )
        return (inputs * price.input + _tokens(output_tokens) * price.output) / _MILLION


#: Batch prices (DESIGN.md: 50% of the standard price), USD per million tokens: the
#: documented version's models, and the later ones whose id and price Anthropic's docs
#: state (the batch processing page's price table, the models overview, the model
#: pages). Models keep coming and prices change: a model not here costs 0 in every
#: estimate, which a budget does not let through (``UnpricedModelError``); give its
#: price with ``PriceTable.with_prices`` (``--price`` on the command line).
DEFAULT_PRICES = PriceTable(
    {
        # the documented version (DESIGN.md)
        "claude-3-5-sonnet-20240620": Price(1.50, 7.50),
        "claude-3-5-sonnet-20241022": Price(1.50, 7.50),
        "claude-3-5-haiku-20241022": Price(0.40, 2.00),
        "claude-3-haiku-20240307": Price(0.125, 0.625),
        "claude-3-opus-20240229": Price(7.50, 37.50),
        # later models
        "claude-3-7-sonnet-20250219": Price(1.50, 7.50),
        "claude-sonnet-4-20250514": Price(1.50, 7.50),
        "claude-opus-4-20250514": Price(7.50, 37.50),
        "claude-opus-4-1-20250805": Price(7.50, 37.50),
        "claude-sonnet-4-5-20250929": Price(1.50, 7.50),
        "claude-sonnet-4-5": Price(1.50, 7.50),
        "claude-haiku-4-5-20251001": Price(0.50, 2.50),
        "claude-haiku-4-5": Price(0.50, 2.50),
        "claude-opus-4-5-20251101": Price(2.50, 12.50),
        "claude-opus-4-5": Price(2.50, 12.50),
        "claude-sonnet-4-6": Price(1.50, 7.50),
        "claude-opus-4-7": Price(2.50, 12.50),
        # aliases the models overview lists for the ids above
        "claude-3-5-haiku-latest": Price(0.40, 2.00),
        "claude-3-7-sonnet-latest": Price(1.50, 7.50),
        "claude-sonnet-4-0": Price(1.50, 7.50),
        "claude-opus-4-0": Price(7.50, 37.50),
        "claude-opus-4-1": Price(7.50, 37.50),
        # 2026 models, from each model's page (standard $ / MTok, halved)
        "claude-opus-4-6": Price(2.50, 12.50),  # $5 / $25
        "claude-opus-4-8": Price(2.50, 12.50),  # $5 / $25
        "claude-sonnet-5": Price(1.00, 5.00),  # $2 / $10
        "claude-opus-5": Price(2.50, 12.50),  # $5 / $25
        "claude-sonnet-5-5": Price(1.00, 5.00),  # $2 / $10
        "claude-opus-5-5": Price(2.00, 10.00),  # $4 / $20
        "claude-fable-5-1": Price(5.00, 25.00),  # $10 / $50
        # not priced here: claude-haiku-5-5 (a tiered price, "from $0.10 / $0.50"),
        # claude-fable-5, claude-fable-5-2, claude-mythos-5(-1, -2) and claude-mythos-preview
        # (no price stated): give them with --price
    }
)


def estimate_cost_usd(
    model: str,
    input_tokens: int,
    max_tokens: int,
    *,
    prices: PriceTable = DEFAULT_PRICES,
    input_factor: float = 1.0,
) -> float:
    """Upper bound of one request's batch cost (output bounded by ``max_tokens``,
    input priced ``input_factor`` times, see ``cache_write_factor``); 0 for a model
    ``prices`` does not know.

    The validate stage inlines this formula with ``PriceTable.rates``
    (``tests/test_pricing.py`` holds the two to the same floats)."""
    price = prices._tuples.get(model)  # inlined PriceTable.estimate_cost_usd (hot path)
    if price is None:
        return 0.0
    return _estimate(price, input_tokens, max_tokens, input_factor)


def cache_write_factor(raw: bytes) -> float:
    """The most a request's input can cost, in times the plain input price: a request
    that sets ``cache_control`` may write its input to the prompt cache, at 1.25x
    (5-minute TTL) or 2x (``"ttl": "1h"``); any other, 1x. An upper bound for the
    estimate (the budget's fail-safe): a cache read costs less, a write no more."""
    if b'"cache_control"' not in raw:
        return 1.0
    return CACHE_WRITE_1H_FACTOR if b'"1h"' in raw else CACHE_WRITE_FACTOR


def _estimate(
    price: tuple[float, float], input_tokens: int, max_tokens: int, input_factor: float = 1.0
) -> float:
    inputs = _tokens(input_tokens) * price[0] * input_factor
    return (inputs + _tokens(max_tokens) * price[1]) / _MILLION


def _tokens(count: int) -> int:
    """A token count as arithmetic may take it: not below 0, and not past the largest
    stored integer (a larger int cannot even be turned into a float: an estimate of
    an absurd ``max_tokens`` must still be a number, not an ``OverflowError``)."""
    if count < 0:
        return 0
    return count if count < _MAX_STORED_INT else _MAX_STORED_INT


def cost_usd(
    model: str,
    input_tokens: int,
    output_tokens: int,
    *,
    cache_creation_input_tokens: int = 0,
    cache_read_input_tokens: int = 0,
    cache_creation_1h_input_tokens: int = 0,
    prices: PriceTable = DEFAULT_PRICES,
) -> float:
    """Batch cost of actual usage; 0 for a model ``prices`` does not know."""
    return prices.cost_usd(
        model,
        input_tokens,
        output_tokens,
        cache_creation_input_tokens=cache_creation_input_tokens,
        cache_read_input_tokens=cache_read_input_tokens,
        cache_creation_1h_input_tokens=cache_creation_1h_input_tokens,
    )


#: The largest integer SQLite stores (a signed 64-bit one).
_MAX_STORED_INT = 2**63 - 1


def whole_units(cost_usd: float, per_usd: int) -> int:
    """``cost_usd`` as a whole number of ``1 / per_usd`` dollars (the ledger keeps the
    job's estimate in billionths), clamped to what a 64-bit integer column holds: an
    estimate, however large, never fails the write that stores it (an overflowing
    estimate is past any budget anyway). NaN counts as 0."""
    units = cost_usd * per_usd
    if not units > 0:  # also NaN
        return 0
    return _MAX_STORED_INT if units >= _MAX_STORED_INT else round(units)
