"""The immutable progress record a running pipeline reports (``Pipeline.statistics()``),
read by the progress display, the final summary, ``pipeline status`` and services."""

from __future__ import annotations

import msgspec

__all__ = ("ModelUsage", "PipelineStatistics")


class ModelUsage(msgspec.Struct, frozen=True):
    """Tokens and cost of the results of one model. ``input_tokens`` are the plain
    input tokens; the prompt cache's are apart (priced differently: ``cost_usd``
    counts them at their own prices)."""

    input_tokens: int = 0
    output_tokens: int = 0
    cost_usd: float = 0.0
    #: input tokens written to the prompt cache (both TTLs)
    cache_creation_input_tokens: int = 0
    #: input tokens read from the prompt cache
    cache_read_input_tokens: int = 0


class PipelineStatistics(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a job's progress; every count is of requests unless named."""

    #: input lines read from the source
    read: int = 0
    #: inputs that went to rejects (bad lines, failed dry runs, duplicates)
    rejected: int = 0
    #: requests in batches created at the service (retries count again)
    submitted: int = 0
    #: requests at the service whose results are not yet collected
    in_flight: int = 0
    #: requests whose batch ended
    ended: int = 0
    #: final result lines written to the output
    written: int = 0
    #: requests waiting to be re-sent
    retrying: int = 0
    #: requests whose custom_id the ledger settles later, with others (ids in no
    #: order: about one in a hundred, and every copy); then sent, or rejected
    deferred: int = 0
    #: requests spooled to be sent again (a retryable error, expired, no result), in
    #: this run; each time counts
    retried: int = 0
    #: items user stages dropped in this run (a filter's ``None``), never sent
    filtered: int = 0
    batches_submitted: int = 0
    batches_in_flight: int = 0
    #: final outcomes: "succeeded", "errored:<error type>", "canceled", "expired"
    outcomes: dict[str, int] = {}
    #: usage per model, from the results
    usage: dict[str, ModelUsage] = {}
    estimated_cost_usd: float = 0.0
    actual_cost_usd: float = 0.0
    #: models of requests or results the price table cannot price: counted as $0 in
    #: both costs (give their prices: ``prices=``, ``--price``)
    unpriced_models: tuple[str, ...] = ()
    dry_run_calls: int = 0
    elapsed_seconds: float = 0.0
    #: requests known to be in the job, when the source can tell (else None)
    total: int | None = None
    finished: bool = False
    #: why the job stopped early (budget reached, signal, canceled), else None
    stopped_reason: str | None = None
    #: the job is canceled (``Pipeline.cancel()``, ``pipeline cancel``, the budget's
    #: cancel action): a re-run sends nothing unless ``resume_canceled=True``
    canceled: bool = False
