"""The job's life across runs and while it runs: a new job does not wipe files,
open-ended sources are never finished for good, rejects reach a callback, and the
progress knows the total once the source is read."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline._errors import UsageError
from pipeline._pipeline import Pipeline
from pipeline._progress import eta_seconds, format_progress_line
from pipeline._worker import QueuePipeline
from pipeline.api._client import Client
from pipeline.ledger import read_status
from pipeline.testing import EmulatorConfig, serve_emulator
from tests._helpers import FAST, entry, read_results, run_job, write_input

if TYPE_CHECKING:
    from pathlib import Path

    from pipeline._stats import PipelineStatistics
    from pipeline.api._types import ResultLine
    from pipeline.stages._items import RejectLine


# -- a new job and the files it would overwrite -----------------------------------


@pytest.mark.parametrize("name", ["out.jsonl", "out.rejects.jsonl"])
async def test_a_new_job_refuses_to_wipe_a_non_empty_file(tmp_path: Path, name: str) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    (tmp_path / name).write_bytes(b'{"an earlier": "result"}\n')
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        for _ in range(2):  # refused again: the refusal left no state behind
            with pytest.raises(UsageError, match="overwrite") as info:
                await run_job(tmp_path, emu.url)
            assert str(tmp_path / name) in str(info.value)
            assert "\n" not in str(info.value)
            assert (tmp_path / name).read_bytes() == b'{"an earlier": "result"}\n'
            assert not (tmp_path / "out.jsonl.state").exists()
        assert emu.submissions() == {}

        _, stats = await run_job(tmp_path, emu.url, overwrite=True)
    assert stats.finished
    assert sorted(r.custom_id for r in read_results(tmp_path / "out.jsonl")) == [
        "req-0",
        "req-1",
        "req-2",
    ]
    assert (tmp_path / "out.rejects.jsonl").read_bytes() == b""


async def test_an_empty_output_file_is_no_reason_to_refuse(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 2)
    (tmp_path / "out.jsonl").touch()
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        _, stats = await run_job(tmp_path, emu.url)
    assert stats.written == 2


# -- open-ended sources, rejects to a callback ------------------------------------


async def _queue_run(
    client: Client, tmp_path: Path, entries: list[Any], rejects: list[RejectLine]
) -> tuple[PipelineStatistics, list[str]]:
    """A QueuePipeline fed ``entries``, its queue then closed (a service shutting
    down); its statistics and the custom_ids of the results it delivered."""
    seen: list[str] = []

    async def on_result(line: ResultLine) -> None:
        seen.append(line.custom_id)

    async def on_reject(reject: RejectLine) -> None:
        rejects.append(reject)

    send, receive = anyio.create_memory_object_stream[Any](len(entries))
    pipeline = QueuePipeline(
        receive, on_result, rejects=on_reject, config=FAST, client=client, state=tmp_path / "s.db"
    )
    async with send:
        for item in entries:
            send.send_nowait(item)
    with anyio.fail_after(30):
        stats = await pipeline.run()
    return stats, sorted(seen)


async def test_a_queue_closed_at_shutdown_does_not_finish_the_job_for_good(
    tmp_path: Path,
) -> None:
    rejects: list[RejectLine] = []
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            first, seen = await _queue_run(client, tmp_path, [entry("a-1"), entry("a-2")], rejects)
            assert seen == ["a-1", "a-2"]
            assert first.written == 2
            assert not (await read_status(tmp_path / "s.db")).finished
            # the service restarts with the same state and a new queue
            second, seen = await _queue_run(client, tmp_path, [entry("b-1"), entry("b-2")], rejects)
        assert sorted(emu.submissions()) == ["a-1", "a-2", "b-1", "b-2"]
    assert seen == ["b-1", "b-2"]
    assert second.written == 4  # the job's count, both runs
    assert not (await read_status(tmp_path / "s.db")).finished
    assert rejects == []


async def test_rejects_of_a_queue_go_to_an_async_callback_once(tmp_path: Path) -> None:
    rejects: list[RejectLine] = []
    first_entries = [
        entry("ok-1"),
        b"{not json",
        {"custom_id": "bad id!", "params": {}},
        {"custom_id": "opaque", "params": {"x": object()}},  # msgspec cannot encode it
    ]
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            stats, seen = await _queue_run(client, tmp_path, first_entries, rejects)
            assert seen == ["ok-1"]
            assert stats.rejected == 3
            assert [(r.line, r.custom_id, r.error.type) for r in rejects] == [
                (2, None, "invalid_json"),
                (3, "bad id!", "invalid_custom_id"),
                (4, "opaque", "invalid_request_error"),
            ]
            assert "cannot be encoded" in rejects[2].error.message
            # committed to the ledger like the rejects file's position: a restart
            # hands over only the new ones (a duplicate custom_id here)
            assert (await read_status(tmp_path / "s.db")).rejects_written == 3
            _, seen = await _queue_run(client, tmp_path, [entry("ok-1"), entry("ok-2")], rejects)
    assert seen == ["ok-2"]
    assert [(r.line, r.custom_id, r.error.type) for r in rejects[3:]] == [
        (5, "ok-1", "invalid_request_error")
    ]
    assert "already used" in rejects[3].error.message


async def test_a_queue_numbers_on_past_every_line_the_job_holds(tmp_path: Path) -> None:
    """A crashed run claimed lines past its checkpoint (the dry run held an earlier
    one): a restarted queue must not give a new entry one of their numbers, or the
    entry could pass for the old line read again."""
    from pipeline.ledger import SQLiteLedger
    from pipeline.stages._items import Entry

    state = tmp_path / "s.db"
    send, receive = anyio.create_memory_object_stream[Any](1)
    with send, receive:  # the job's identity, as the pipeline below will check it
        spec = QueuePipeline(receive, print, state=state).job_spec()
    ledger = SQLiteLedger(state)
    await ledger.open(spec)
    raw = msgspec.json.encode(entry("old-9"))
    await ledger.claim([Entry(9, "old-9", raw)], [], checkpoint=0, line=3)  # checkpoint: 3
    assert await ledger.last_line() == 9
    await ledger.aclose()

    rejects: list[RejectLine] = []
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            await _queue_run(client, tmp_path, [b"{not json", entry("old-9")], rejects)
    # numbered 10 and 11, after line 9: the same custom_id is a duplicate, said so
    assert [(r.line, r.custom_id, r.error.type) for r in rejects] == [
        (10, None, "invalid_json"),
        (11, "old-9", "invalid_request_error"),
    ]


# -- the total and the ETA ---------------------------------------------------------


async def test_the_total_is_known_once_the_source_is_read_and_gives_an_eta(
    tmp_path: Path,
) -> None:
    bad = {3: b"{not json", 9: b'{"custom_id": "x"}'}
    write_input(tmp_path / "in.jsonl", 20, bad)
    # a duplicate at the end: rejected only when its batch is claimed
    with (tmp_path / "in.jsonl").open("ab") as f:
        f.write(msgspec.json.encode(entry("req-0")) + b"\n")
    release = anyio.Event()
    count = 0

    async def on_result(line: ResultLine) -> None:
        nonlocal count
        count += 1
        if count > 10:  # the second batch waits until the test has looked
            await release.wait()

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl", on_result, config=FAST, client=client, state=tmp_path / "s"
            )
            assert pipeline.statistics().total is None
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipeline.run)
                totals: set[int | None] = set()
                with anyio.fail_after(20):
                    while True:
                        stats = pipeline.statistics()
                        totals.add(stats.total)
                        if stats.total == 20 and stats.written >= 10:
                            break
                        await anyio.sleep(0.005)
                release.set()
            final = pipeline.statistics()
    # 23 lines read, 3 rejected: 20 requests to write (unknown while reading)
    assert None in totals
    assert totals - {None} <= {20, 21}  # 21 until the duplicate is found
    assert stats.written == 10
    line = format_progress_line(stats)
    assert line.startswith("10/20 written")
    eta = eta_seconds(stats)
    assert eta is not None
    assert eta == pytest.approx(stats.elapsed_seconds)  # half done: as long again
    assert "ETA" in line
    assert final.finished
    assert (final.read, final.rejected, final.written, final.total) == (23, 3, 20, 20)
