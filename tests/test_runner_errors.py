"""How a run ends badly: one ``StageError`` whatever the mode, ``async with``
raising it, a stop that does not wait out a reconcile, and the budget's message."""

from __future__ import annotations

import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline._errors import BudgetExceededError, StageError
from pipeline._pipeline import Pipeline
from pipeline.api._client import Client
from pipeline.ledger import JobSpec, SQLiteLedger, read_status
from pipeline.stages._items import Entry
from pipeline.testing import EmulatorConfig, serve_emulator
from tests._helpers import FAST, entry, run_job, write_input

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline.api._types import MessageBatchList, ResultLine


async def failing(line: ResultLine) -> None:
    raise ValueError("sink is broken")


def embedded(tmp_path: Path, output: Any = failing) -> Pipeline:
    """A pipeline on the embedded emulator (no client, no key, no base URL)."""
    return Pipeline(
        [entry(f"e-{i}") for i in range(3)],
        output,
        config=FAST,
        state=tmp_path / "s.db",
        emulator_dir=tmp_path / "emu",
    )


@pytest.fixture(autouse=True)
def no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)


async def test_a_stage_failure_on_the_embedded_emulator_is_one_stage_error(
    tmp_path: Path,
) -> None:
    with anyio.fail_after(30), pytest.raises(StageError) as info:
        await embedded(tmp_path).run()
    assert info.value.stage == "results"
    assert isinstance(info.value.__cause__, ValueError)


async def test_async_with_raises_the_stage_failure_on_the_way_out(tmp_path: Path) -> None:
    with anyio.fail_after(30), pytest.raises(StageError) as info:
        async with embedded(tmp_path):
            pass  # the job runs (and fails) in the background; leaving waits for it
    assert info.value.stage == "results"
    assert isinstance(info.value.__cause__, ValueError)


async def test_async_with_does_not_raise_again_what_wait_raised(tmp_path: Path) -> None:
    caught: list[BaseException] = []
    with anyio.fail_after(30):
        async with embedded(tmp_path) as pipeline:
            try:
                await pipeline.wait()
            except StageError as exc:
                caught.append(exc)
    assert len(caught) == 1


async def test_async_with_a_healthy_job_ends_quietly(tmp_path: Path) -> None:
    seen: list[ResultLine] = []

    async def on_result(line: ResultLine) -> None:
        seen.append(line)

    with anyio.fail_after(30):
        async with embedded(tmp_path, on_result) as pipeline:
            pass
    assert pipeline.statistics().finished
    assert len(seen) == 3


class _ListingClient(Client):
    """Tells when a reconcile lists the workspace's batches."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.listed = anyio.Event()

    async def list_batches_page(self, **kwargs: Any) -> MessageBatchList:
        page = await super().list_batches_page(**kwargs)
        self.listed.set()
        return page


async def test_stop_cuts_a_reconcile_settle_wait_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("PIPELINE_RECONCILE_SETTLE_SECONDS", raising=False)  # 60 s
    state = tmp_path / "s.db"
    # a create sent a moment ago whose answer never came (the process died)
    ledger = SQLiteLedger(state)
    await ledger.open(
        JobSpec(input_path=None, input_fingerprint=None, output_path=None, rejects_path=None)
    )
    raw = msgspec.json.encode(entry("u-1"))
    claim = await ledger.claim([Entry(line=1, custom_id="u-1", raw=raw)], [], checkpoint=-1, line=1)
    await ledger.record_sending(claim.local_id, body_bytes=len(raw) + 20, sent_at=time.time())
    await ledger.aclose()

    async def on_result(line: ResultLine) -> None: ...

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        listing = _ListingClient(api_key="k", base_url=emu.url)
        async with listing as client:
            pipeline = Pipeline([], on_result, config=FAST, client=client, state=state)
            with anyio.fail_after(15):  # well under the minute the settle wait lasts
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pipeline.run)
                    await listing.listed.wait()  # no match yet: it waits for the create
                    pipeline.stop("test")
    stats = pipeline.statistics()
    assert stats.stopped_reason == "test"
    assert not stats.finished
    # the create of unknown outcome is still to be settled, on the next start
    status = await read_status(state)
    assert [b.state for b in status.batches] == ["sending"]


def test_the_budget_message_is_one_sentence_with_enough_digits() -> None:
    error = BudgetExceededError(0.005, 0.0053125, line=8, custom_id="x", not_submitted=13)
    assert str(error) == (
        "budget $0.005 reached: the next request (line 8, custom_id 'x') would bring the "
        "estimated cost to $0.005313; 13 requests not submitted; re-run with a larger "
        "--budget-usd to go on"
    )
    # amounts that differ never read the same, however close
    close = str(BudgetExceededError(0.005, 0.005000125))
    assert "budget $0.005 reached: the next request would bring" in close
    assert "to $0.0050001;" in close
    assert str(BudgetExceededError(25, 25.3)).startswith("budget $25.00 reached")


async def test_a_budget_stop_says_so_once_at_warning(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    write_input(tmp_path / "in.jsonl", 10)
    config = msgspec.structs.replace(FAST, budget_usd=0.00002)
    caplog.set_level(logging.WARNING, logger="pipeline")
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        _, stats = await run_job(tmp_path, emu.url, config)
    reason = stats.stopped_reason
    assert reason is not None
    assert reason.startswith("budget $0.00002 reached: the next request")
    assert reason.count("budget") == 2  # "budget $... reached" and "--budget-usd"
    [record] = [r for r in caplog.records if "reached" in r.getMessage()]
    assert record.levelno == logging.WARNING
    assert record.getMessage() == reason
