"""The report at the end of a job: what happened to every request, what it cost,
and where the results are.

``render_summary`` gives plain text (logs, pipes, files); ``render_summary_rich``
the same content as a ``rich`` table for terminals; ``print_summary`` picks one.
All of them read only a ``PipelineStatistics`` record, so a service can build
the same report from ``pipeline.statistics()``.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from ._stats import PipelineStatistics

__all__ = (
    "format_cost",
    "format_duration",
    "log_summary",
    "outcome_counts",
    "print_summary",
    "render_summary",
    "render_summary_rich",
    "summary_rows",
)

_ERRORED = "errored:"

logger = logging.getLogger("pipeline")


def format_cost(usd: float) -> str:
    """Dollars, with enough digits that a small job does not read as $0.00."""
    if usd == 0:
        return "$0.00"
    if abs(usd) < 0.0001:
        return "<$0.0001"
    if abs(usd) < 1:
        return f"${usd:.4f}"
    return f"${usd:,.2f}"


def format_duration(seconds: float) -> str:
    """``12.3 s``, ``4 min 05 s``, ``2 h 03 min``: the way a person reads a duration."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {secs:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


def outcome_counts(stats: PipelineStatistics) -> tuple[dict[str, int], dict[str, int]]:
    """``({"succeeded", "errored", "canceled", "expired", "rejected"} -> count,
    {error type -> count})`` from the record's outcomes."""
    errors: dict[str, int] = {}
    main = {"succeeded": 0, "errored": 0, "canceled": 0, "expired": 0, "rejected": stats.rejected}
    for key, count in stats.outcomes.items():
        if key.startswith(_ERRORED) or key == "errored":
            main["errored"] += count
            error_type = key[len(_ERRORED) :] or "unknown"
            errors[error_type] = errors.get(error_type, 0) + count
        else:
            main[key] = main.get(key, 0) + count
    return main, dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0])))


def _headline(stats: PipelineStatistics) -> str:
    took = format_duration(stats.elapsed_seconds)
    if stats.canceled:
        return f"Job canceled ({stats.stopped_reason}) after {took}"
    if stats.stopped_reason:
        return f"Job stopped ({stats.stopped_reason}) after {took}"
    if stats.finished:
        return f"Job finished in {took}"
    return f"Job not finished after {took}"


def summary_rows(
    stats: PipelineStatistics, *, output: str | None, rejects: str | None
) -> list[tuple[str, str]]:
    """The summary as (label, text) rows, shared by the plain and rich renderings."""
    main, errors = outcome_counts(stats)
    errored = f"errored {main['errored']:,}"
    if errors:
        errored += " (" + ", ".join(f"{t} {n:,}" for t, n in errors.items()) + ")"
    rows = [
        (
            "requests",
            f"read {stats.read:,} · submitted {stats.submitted:,} in "
            f"{stats.batches_submitted:,} batches · written {stats.written:,}",
        ),
        ("outcomes", _outcomes_text(stats, main, errored)),
    ]
    if stats.in_flight or stats.retrying:
        rows.append(
            (
                "pending",
                f"in flight {stats.in_flight:,} in {stats.batches_in_flight:,} batches"
                f" · retrying {stats.retrying:,} (collected on the next start)",
            )
        )
    for model, usage in sorted(stats.usage.items()):
        cached = ""
        if usage.cache_creation_input_tokens or usage.cache_read_input_tokens:
            cached = (
                f" · cache {usage.cache_creation_input_tokens:,} written"
                f" / {usage.cache_read_input_tokens:,} read"
            )
        rows.append(
            (
                "tokens",
                f"{model}: {usage.input_tokens:,} in / {usage.output_tokens:,} out{cached}"
                f" · {format_cost(usage.cost_usd)}",
            )
        )
    if not stats.usage:
        rows.append(("tokens", "none (no succeeded results)"))
    # the actual cost is of the results this run collected; the estimate is the job's
    # (the ledger keeps it across runs, as ``status`` shows it)
    resumed = _written_before(stats)
    rows.append(
        (
            "cost",
            f"actual {format_cost(stats.actual_cost_usd)}"
            + (" this run" if resumed else "")
            + f" · estimated {format_cost(stats.estimated_cost_usd)}"
            + (" for the whole job" if resumed else "")
            + " (batch prices: 50% of standard"
            + ("; cache writes 1.25x input (1 h TTL: 2x), reads 0.1x" if _cached(stats) else "")
            + ")",
        )
    )
    if stats.unpriced_models:
        names = ", ".join(stats.unpriced_models)
        rows.append(("prices", f"none for {names}: counted as $0 (--price MODEL=IN,OUT)"))
    if stats.dry_run_calls:
        rows.append(("dry run", f"{stats.dry_run_calls:,} calls"))
    rows.append(("wall time", format_duration(stats.elapsed_seconds)))
    if output:
        rows.append(("output", output))
    if rejects:
        note = f" ({stats.rejected:,} lines)" if stats.rejected else " (none)"
        rows.append(("rejects", rejects + note))
    elif stats.rejected:
        rows.append(("rejects", f"{stats.rejected:,} (not written to a file)"))
    return rows


def _outcomes_text(stats: PipelineStatistics, main: dict[str, int], errored: str) -> str:
    if not stats.outcomes and stats.written:
        # a finished job run again: its counts come from the state file, which keeps
        # no count per outcome
        return (
            f"written {stats.written:,} (per outcome: see the output)"
            f" · rejected {main['rejected']:,}"
        )
    text = (
        f"succeeded {main['succeeded']:,} · {errored} · canceled {main['canceled']:,}"
        f" · expired {main['expired']:,} · rejected {main['rejected']:,}"
    )
    earlier = _written_before(stats)
    if earlier:  # a resumed job: the state file keeps no count per outcome
        text += f" (results of this run; {earlier:,} written by earlier runs)"
    return text


def _cached(stats: PipelineStatistics) -> bool:
    """Whether any result read or wrote the prompt cache."""
    return any(
        u.cache_creation_input_tokens or u.cache_read_input_tokens for u in stats.usage.values()
    )


def _written_before(stats: PipelineStatistics) -> int:
    """Result lines of the job written by earlier runs (a resumed job)."""
    this_run = sum(stats.outcomes.values())
    return max(0, stats.written - this_run)


def render_summary(
    stats: PipelineStatistics, *, output: str | None = None, rejects: str | None = None
) -> str:
    """The end-of-run report as plain text lines (no colour, no box drawing)."""
    rows = summary_rows(stats, output=output, rejects=rejects)
    width = max(len(label) for label, _ in rows)
    lines = [_headline(stats)]
    lines.extend(f"  {label:<{width}}  {text}" for label, text in rows)
    return "\n".join(lines) + "\n"


def render_summary_rich(
    stats: PipelineStatistics, *, output: str | None = None, rejects: str | None = None
) -> RenderableType:
    """The end-of-run report as a ``rich`` table, for terminals."""
    from rich.table import Table

    style = "yellow" if stats.stopped_reason or not stats.finished else "green"
    table = Table(title=_headline(stats), title_style=f"bold {style}", show_header=False, box=None)
    table.add_column(style="bold cyan", no_wrap=True)
    table.add_column(overflow="fold")
    for label, text in summary_rows(stats, output=output, rejects=rejects):
        table.add_row(label, text)
    return table


def print_summary(
    stats: PipelineStatistics,
    *,
    output: str | None = None,
    rejects: str | None = None,
    console: Console | None = None,
    stream: TextIO | None = None,
) -> None:
    """Print the report: with ``rich`` on ``console`` when given, else plain on
    ``stream`` (stderr)."""
    if console is not None:
        console.print(render_summary_rich(stats, output=output, rejects=rejects))
        return
    import sys

    target = stream if stream is not None else sys.stderr
    target.write(render_summary(stats, output=output, rejects=rejects))
    target.flush()


def log_summary(stats: PipelineStatistics, *, output: str | None, rejects: str | None) -> None:
    """The summary as one structured log record (``--log-format json``)."""
    outcomes, errors = outcome_counts(stats)
    logger.info(
        "job %s: %d written, %d rejected, $%.4f",
        "finished" if stats.finished else "stopped",
        stats.written,
        stats.rejected,
        stats.actual_cost_usd,
        extra={
            "outcomes": outcomes,
            "errors": errors,
            "usage": {
                model: {
                    "input_tokens": u.input_tokens,
                    "output_tokens": u.output_tokens,
                    "cache_creation_input_tokens": u.cache_creation_input_tokens,
                    "cache_read_input_tokens": u.cache_read_input_tokens,
                }
                for model, u in stats.usage.items()
            },
            "estimated_cost_usd": stats.estimated_cost_usd,
            "actual_cost_usd": stats.actual_cost_usd,
            "unpriced_models": list(stats.unpriced_models),
            "elapsed_seconds": round(stats.elapsed_seconds, 3),
            "output": output,
            "rejects": rejects,
            "stopped_reason": stats.stopped_reason,
        },
    )
