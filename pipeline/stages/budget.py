"""The spend guard: stop submission once the estimated cost would exceed the budget.

Each entry's cost is estimated before it is submitted: ``Entry.cost_usd`` when an
earlier stage set it (the dry run prices what it measured), else the batch price
(``pipeline._pricing``) of its input tokens (measured, or the documented
approximation of ``check_entry``) plus ``max_tokens`` of output, the most it can
cost. The guard passes items while the running total of what it passed stays within
``config.budget_usd``. At the first entry that would go over, it forwards nothing
more: it reports ``BudgetExceededError`` to ``on_exceeded``, sends a stop
``Watermark`` (no checkpoint may pass the refused entry, even if rejects or entries
after it went by first) and a final ``Flush`` (so the partial batch before it is
submitted), closes its send side and
stops reading (upstream then sees a closed stream and stops; the source stops
reading). Batches already submitted are not touched: the pipeline collects them and
ends with the budget message.

A model the price table does not know has no estimate. Without a budget its entries
pass at $0 and the model is listed in ``SpendStatistics.unpriced_models``. With a
budget, a cost that cannot be estimated is not let through as $0: the guard stops at
the first such entry as at the budget, with ``UnpricedModelError`` (it names the model;
give its price, ``--price`` or ``prices=``, and re-run).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import msgspec

from .._errors import BudgetExceededError, UnpricedModelError
from .._pricing import DEFAULT_PRICES, PriceTable, cache_write_factor
from ..api._schema import approx_input_tokens
from ._items import Entry, Flush, Reject, Watermark

if TYPE_CHECKING:
    from collections.abc import Callable

    from anyio.abc import ObjectReceiveStream, ObjectSendStream

    from .._config import PipelineConfig

__all__ = ("SpendMeter", "SpendStatistics", "entry_cost_usd", "spend_guard")

Item = Entry | Reject | Flush | Watermark
#: Slack for float rounding: a total equal to the budget is within it.
_EPSILON_USD = 1e-9


class SpendStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of the spend guard's count."""

    #: estimated cost of the entries passed (the most they can cost)
    estimated_cost_usd: float = 0.0
    #: entries passed
    passed: int = 0
    budget_usd: float | None = None
    #: True once the budget stopped submission
    stopped: bool = False
    #: models seen that the price table cannot price (counted as 0)
    unpriced_models: tuple[str, ...] = ()


class SpendMeter:
    """The live counters of one spend guard; ``statistics()`` takes a snapshot."""

    def __init__(self) -> None:
        self.estimated_cost_usd = 0.0
        self.passed = 0
        self.budget_usd: float | None = None
        self.stopped = False
        self.unpriced_models: set[str] = set()

    def statistics(self) -> SpendStatistics:
        return SpendStatistics(
            estimated_cost_usd=self.estimated_cost_usd,
            passed=self.passed,
            budget_usd=self.budget_usd,
            stopped=self.stopped,
            unpriced_models=tuple(sorted(self.unpriced_models)),
        )


def entry_cost_usd(entry: Entry, prices: PriceTable = DEFAULT_PRICES) -> float:
    """The entry's estimated cost, computed (and stored on it) when not yet known."""
    if entry.cost_usd > 0:
        return entry.cost_usd
    if entry.input_tokens < 0:
        entry.input_tokens = approx_input_tokens(entry.raw)
    if entry.input_factor < 0:
        entry.input_factor = cache_write_factor(entry.raw)
    entry.cost_usd = prices.estimate_cost_usd(
        entry.model, entry.input_tokens, entry.max_tokens, input_factor=entry.input_factor
    )
    return entry.cost_usd


async def spend_guard(
    receive: ObjectReceiveStream[list[Item]],
    send: ObjectSendStream[list[Item]],
    /,
    *,
    config: PipelineConfig,
    on_exceeded: Callable[[BudgetExceededError], None] | None = None,
    prices: PriceTable = DEFAULT_PRICES,
    meter: SpendMeter | None = None,
    spent_usd: float = 0.0,
) -> None:
    """The spend-guard stage (see the module docstring); ``config.budget_usd=None``
    only counts. ``meter`` receives the live counters (``meter.statistics()``).
    ``spent_usd``: the estimate of what earlier runs of the job claimed (the ledger's
    ``estimated_cost_usd``): the budget holds for the whole job, not per run."""
    meter = meter if meter is not None else SpendMeter()
    meter.budget_usd = budget = config.budget_usd
    meter.estimated_cost_usd = spent_usd
    async with receive, send:
        async for items in receive:
            stop = _admit(items, budget, prices, meter)
            if stop is None:
                await send.send(items)
                continue
            passed = items[:stop]
            if passed:
                await send.send(passed)
            entry = items[stop]
            assert type(entry) is Entry
            meter.stopped = True
            if on_exceeded is not None:
                total = meter.estimated_cost_usd + entry_cost_usd(entry, prices)
                line, cid = entry.line, entry.custom_id
                if entry.model in prices:
                    error = BudgetExceededError(budget or 0.0, total, line=line, custom_id=cid)
                else:
                    error = UnpricedModelError(
                        budget or 0.0, total, model=entry.model, line=line, custom_id=cid
                    )
                on_exceeded(error)
            # The checkpoint stands where the refused entry starts, whatever passed
            # before it out of line order (the dry run lets checked shapes and
            # rejects overtake held entries): a re-run reads on from there.
            mark = Watermark(end=entry.offset, line=entry.line - 1, stop=True)
            await send.send([mark, Flush(end=entry.offset, final=True)])
            return


def _admit(
    items: list[Item], budget: float | None, prices: PriceTable, meter: SpendMeter
) -> int | None:
    """Count the entries of ``items``; the index of the first one over budget, or None."""
    total = meter.estimated_cost_usd
    for index, item in enumerate(items):
        if type(item) is not Entry:
            continue
        cost = entry_cost_usd(item, prices)
        if cost == 0.0 and item.model not in prices:
            meter.unpriced_models.add(item.model)
            if budget is not None:  # no estimate: not let through as $0
                meter.estimated_cost_usd = total
                return index
        if budget is not None and total + cost > budget + _EPSILON_USD:
            meter.estimated_cost_usd = total
            return index
        total += cost
        meter.passed += 1
    meter.estimated_cost_usd = total
    return None
