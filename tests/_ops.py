"""Shared by the tests of metrics, traces, health and the job page: a job's input
with some bad lines, a fast config, and reading Prometheus text."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio
import msgspec
from prometheus_client.parser import text_string_to_metric_families

from pipeline import PipelineConfig

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "claude-3-haiku-20240307"
KEY = "sk-ant-api03-ops-test-key"
CONFIG = PipelineConfig(
    max_batch_requests=10,
    max_in_flight=1_000,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="count-tokens",
    dry_run_rate=1_000.0,
)
#: the bad lines write_input adds, by the reject type they get
BAD_LINES = {
    "invalid_json": [b"{not json", b'{"custom_id": "x-1", '],
    "invalid_custom_id": [
        msgspec.json.encode(
            {
                "custom_id": "has spaces",
                "params": {"model": MODEL, "max_tokens": 8, "messages": []},
            }
        )
    ],
}


async def quick(seconds: float) -> None:
    """The client's back-off, in fast steps (its schedule is the client's tests')."""
    await anyio.sleep(min(seconds, 0.001))


def write_input(path: Path, n: int, *, bad: bool = True) -> list[str]:
    """``n`` good requests (ids ``m-000``...), with the ``BAD_LINES`` among them."""
    ids = [f"m-{i:03d}" for i in range(n)]
    lines = [
        msgspec.json.encode(
            {
                "custom_id": cid,
                "params": {
                    "model": MODEL,
                    "max_tokens": 16,
                    "messages": [{"role": "user", "content": f"tell me about {cid}"}],
                },
            }
        )
        for cid in ids
    ]
    if bad:
        for i, extra in enumerate(line for group in BAD_LINES.values() for line in group):
            lines.insert(3 + 7 * i, extra)
    path.write_bytes(b"\n".join(lines) + b"\n")
    return ids


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Prometheus text, parsed by prometheus-client's own parser: (sample name,
    sorted labels) -> value."""
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def value(
    parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """One sample's value (0 when absent)."""
    return parsed.get((name, tuple(sorted(labels.items()))), 0.0)


def total(
    parsed: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str
) -> float:
    """The sum over every sample of ``name`` whose labels include ``labels``."""
    return sum(
        v
        for (n, ls), v in parsed.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )
