"""The dry run checks each job's models against the service's ``GET /v1/models``
(issue 16): an unknown or retired model is named in rejects before any batch, with no
call spent on its requests, and the list is asked once per job."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import httpx
import msgspec
import pytest

from pipeline import DryRunAbortedError, Pipeline, PipelineConfig, StageError
from pipeline.api import Client
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

HAIKU = "claude-3-haiku-20240307"


class CountingTransport(httpx.AsyncBaseTransport):
    """The real HTTP transport, counting the calls per method and path."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.calls: Counter[str] = Counter()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.calls[f"{request.method} {request.url.path}"] += 1
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


def line(cid: str, model: str) -> bytes:
    params = {"model": model, "max_tokens": 16, "messages": [{"role": "user", "content": cid}]}
    return msgspec.json.encode({"custom_id": cid, "params": params})


async def run_job(tmp_path: Path, url: str, lines: list[bytes], **config: Any) -> Counter[str]:
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    transport = CountingTransport()
    settings = PipelineConfig(
        max_batch_requests=50, linger_seconds=0.01, poll_interval=0.01, **config
    )
    async with Client(api_key="test-key", base_url=url, transport=transport) as client:
        pipeline = Pipeline(
            tmp_path / "in.jsonl",
            tmp_path / "out.jsonl",
            tmp_path / "rejects.jsonl",
            config=settings,
            client=client,
        )
        with anyio.fail_after(30):
            await pipeline.run()
    return transport.calls


def read(path: Path) -> list[dict[str, Any]]:
    return [msgspec.json.decode(x) for x in path.read_bytes().splitlines()] if path.exists() else []


@pytest.mark.parametrize("mode", ["count-tokens", "messages"])
async def test_unknown_and_retired_models_are_rejected_before_any_batch(
    tmp_path: Path, mode: str
) -> None:
    lines = [line(f"h-{i}", HAIKU) for i in range(4)]
    lines += [line(f"a-{i}", "claude-opus-4-1") for i in range(2)]  # an alias: offered
    lines += [line(f"n-{i}", "claude-nope-7") for i in range(3)]
    lines += [line(f"r-{i}", "claude-2.1") for i in range(2)]
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        calls = await run_job(tmp_path, emu.url, lines, dry_run=mode)
        submitted = emu.submissions()
    written = sorted(r["custom_id"] for r in read(tmp_path / "out.jsonl"))
    assert written == [*(f"a-{i}" for i in range(2)), *(f"h-{i}" for i in range(4))]
    rejected = {r["custom_id"]: r for r in read(tmp_path / "rejects.jsonl")}
    assert sorted(rejected) == ["n-0", "n-1", "n-2", "r-0", "r-1"]
    assert (
        "model: claude-nope-7 is not a model of the service" in rejected["n-0"]["error"]["message"]
    )
    assert "model: claude-2.1 is retired" in rejected["r-0"]["error"]["message"]
    assert all("line 7" in rejected[f"n-{i}"]["error"]["message"] for i in (1, 2))
    assert not any(cid[0] in "nr" for cid in submitted)
    # one list per job, one look-up per name it does not hold, no call for their requests
    assert calls["GET /v1/models"] == 1
    assert sum(n for call, n in calls.items() if call.startswith("GET /v1/models/")) == 3
    sampled = calls["POST /v1/messages/count_tokens"] + calls["POST /v1/messages"]
    assert sampled == 2  # the two offered shapes (haiku, the alias)


async def test_the_abort_policy_stops_the_job_at_an_unknown_model(tmp_path: Path) -> None:
    lines = [line("h-0", HAIKU), line("n-0", "claude-nope-7")]
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        with pytest.raises(StageError, match="model: claude-nope-7") as caught:
            await run_job(tmp_path, emu.url, lines, dry_run="count-tokens", dry_run_policy="abort")
        assert isinstance(caught.value.__cause__, DryRunAbortedError)
        assert "n-0" not in emu.submissions()
