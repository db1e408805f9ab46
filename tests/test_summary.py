"""The end-of-run summary: outcomes, tokens per model, cost, time, where files are."""

from __future__ import annotations

import io

from rich.console import Console

from pipeline._stats import ModelUsage, PipelineStatistics
from pipeline._summary import (
    format_cost,
    format_duration,
    outcome_counts,
    print_summary,
    render_summary,
)

STATS = PipelineStatistics(
    read=1003,
    rejected=3,
    submitted=1002,
    ended=1002,
    written=1000,
    batches_submitted=2,
    outcomes={
        "succeeded": 990,
        "errored:invalid_request_error": 6,
        "errored:overloaded_error": 1,
        "canceled": 1,
        "expired": 2,
    },
    usage={
        "claude-3-haiku-20240307": ModelUsage(
            input_tokens=120_000, output_tokens=45_000, cost_usd=0.043125
        ),
        "claude-3-5-sonnet-20241022": ModelUsage(
            input_tokens=1_000, output_tokens=2_000, cost_usd=0.0165
        ),
    },
    estimated_cost_usd=0.07,
    actual_cost_usd=0.059625,
    elapsed_seconds=125.0,
    total=1003,
    finished=True,
)


def test_plain_summary_has_every_outcome_model_cost_and_path() -> None:
    text = render_summary(STATS, output="out/results.jsonl", rejects="out/rejects.jsonl")
    assert text.startswith("Job finished in 2 min 05 s\n")
    assert "succeeded 990" in text
    assert "errored 7 (invalid_request_error 6, overloaded_error 1)" in text
    assert "canceled 1" in text
    assert "expired 2" in text
    assert "rejected 3" in text
    assert "claude-3-haiku-20240307: 120,000 in / 45,000 out · $0.0431" in text
    assert "claude-3-5-sonnet-20241022: 1,000 in / 2,000 out · $0.0165" in text
    assert "actual $0.0596 · estimated $0.0700 (batch prices: 50% of standard)" in text
    assert "wall time" in text
    assert "out/results.jsonl" in text
    assert "out/rejects.jsonl (3 lines)" in text


def test_a_resumed_job_says_which_counts_are_of_this_run() -> None:
    import msgspec

    resumed = msgspec.structs.replace(STATS, written=1500)  # 500 before a restart
    text = render_summary(resumed)
    assert "succeeded 990" in text
    assert "(results of this run; 500 written by earlier runs)" in text
    assert "actual $0.0596 this run · estimated $0.0700 for the whole job" in text
    assert "earlier runs" not in render_summary(STATS)


def test_outcome_counts_fold_error_types() -> None:
    main, errors = outcome_counts(STATS)
    assert main == {"succeeded": 990, "errored": 7, "canceled": 1, "expired": 2, "rejected": 3}
    assert list(errors) == ["invalid_request_error", "overloaded_error"]


def test_stopped_job_says_why_and_what_is_pending() -> None:
    stats = PipelineStatistics(
        read=10, submitted=10, in_flight=6, batches_in_flight=1, stopped_reason="SIGTERM"
    )
    text = render_summary(stats, output=None, rejects=None)
    assert text.startswith("Job stopped (SIGTERM) after 0.0 s")
    assert "in flight 6 in 1 batches" in text
    assert "none (no succeeded results)" in text


def test_rich_summary_renders_the_same_rows() -> None:
    out = io.StringIO()
    console = Console(file=out, width=200, color_system=None)
    print_summary(STATS, output="r.jsonl", rejects=None, console=console)
    text = out.getvalue()
    assert "Job finished in 2 min 05 s" in text
    assert "errored 7 (invalid_request_error 6, overloaded_error 1)" in text
    assert "rejects" in text
    assert "3 (not written to a file)" in text


def test_formatting_helpers() -> None:
    assert format_cost(0) == "$0.00"
    assert format_cost(0.00042) == "$0.0004"
    assert format_cost(1234.5) == "$1,234.50"
    assert format_duration(3.21) == "3.2 s"
    assert format_duration(7384) == "2 h 03 min"
