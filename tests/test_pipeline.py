"""End-to-end: the whole pipeline against the emulator served on loopback."""

from __future__ import annotations

import bz2
import gzip
import logging
import lzma
import os
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline import Client, Pipeline, PipelineConfig, StageError, UsageError
from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator
from tests._helpers import FAST, MODEL, entry, kind, read_results, run_job, write_input

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from pipeline.api import ResultLine


async def test_every_request_once_with_rejects_and_several_batches(tmp_path: Path) -> None:
    bad = {
        3: b'{"custom_id": "x", "params": ',
        7: b'{"custom_id": "bad id!", "params": {}}',
        20: msgspec.json.encode(entry("req-5")),  # a duplicate custom_id
    }
    ids = write_input(tmp_path / "in.jsonl", 45, bad)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "emu") as emu:
        _, stats = await run_job(tmp_path, emu.url)
        submissions = emu.submissions()
    results = read_results(tmp_path / "out.jsonl")
    assert sorted(r.custom_id for r in results) == sorted(ids)  # exactly once each
    assert all(kind(r) == "succeeded" for r in results)
    assert all(count == 1 for count in submissions.values())
    rejects = [
        msgspec.json.decode(x) for x in (tmp_path / "out.rejects.jsonl").read_bytes().splitlines()
    ]
    assert [(r["line"], r["error"]["type"]) for r in rejects] == [
        (3, "invalid_json"),
        (7, "invalid_custom_id"),
        (20, "invalid_request_error"),
    ]
    assert "already used" in rejects[2]["error"]["message"]
    assert stats.finished
    assert stats.batches_submitted >= 5
    assert stats.written == 45
    assert stats.rejected == 3
    assert stats.read == 48
    assert stats.outcomes == {"succeeded": 45}


async def test_results_matched_by_custom_id_not_position(tmp_path: Path) -> None:
    ids = write_input(tmp_path / "in.jsonl", 30)
    async with serve_emulator(
        EmulatorConfig(batch_seconds=0.0, seed=7), data_dir=tmp_path / "e"
    ) as emu:
        await run_job(tmp_path, emu.url, msgspec.structs.replace(FAST, max_batch_requests=30))
    results = read_results(tmp_path / "out.jsonl")
    order = [r.custom_id for r in results]
    assert sorted(order) == sorted(ids)
    assert order != ids  # the emulator shuffles; we did not rely on position
    for r in results:  # the fake model's answer is about the request's own text
        assert r.result.message.model == MODEL  # type: ignore[union-attr]


async def test_retryable_errors_are_retried_and_end_in_output(tmp_path: Path) -> None:
    ids = write_input(tmp_path / "in.jsonl", 60)
    config = msgspec.structs.replace(FAST, max_attempts=5)
    emu_config = EmulatorConfig(batch_seconds=0.0, request_error_rate=0.3, seed=3)
    async with serve_emulator(emu_config, data_dir=tmp_path / "e") as emu:
        _, stats = await run_job(tmp_path, emu.url, config)
        submissions = emu.submissions()
    results = read_results(tmp_path / "out.jsonl")
    assert sorted(r.custom_id for r in results) == sorted(ids)
    assert max(submissions.values()) > 1  # some were re-sent
    assert max(submissions.values()) <= 5
    retried_ok = [r for r in results if submissions[r.custom_id] > 1 and kind(r) == "succeeded"]
    assert retried_ok
    # whatever is still errored used every attempt
    for r in results:
        if kind(r) == "errored":
            assert submissions[r.custom_id] == 5
    assert stats.finished


async def test_expired_requests_are_retried(tmp_path: Path) -> None:
    ids = write_input(tmp_path / "in.jsonl", 20)
    clock = ManualClock()
    emu_config = EmulatorConfig(batch_seconds=100.0, expiry_seconds=60.0, clock=clock)
    config = msgspec.structs.replace(FAST, max_attempts=4)
    async with serve_emulator(emu_config, data_dir=tmp_path / "e") as emu:
        async with anyio.create_task_group() as tg:

            async def tick() -> None:
                while True:
                    clock.advance(30.0)
                    await anyio.sleep(0.01)

            tg.start_soon(tick)
            _, stats = await run_job(tmp_path, emu.url, config)
            tg.cancel_scope.cancel()
        submissions = emu.submissions()
    results = read_results(tmp_path / "out.jsonl")
    assert sorted(r.custom_id for r in results) == sorted(ids)
    assert max(submissions.values()) > 1
    retried_ok = [r for r in results if submissions[r.custom_id] > 1 and kind(r) == "succeeded"]
    assert retried_ok
    assert all(submissions[r.custom_id] == 4 for r in results if kind(r) == "expired")
    assert stats.finished


async def test_iterable_source_and_callback_sink(tmp_path: Path) -> None:
    seen: list[ResultLine] = []

    async def on_result(line: ResultLine) -> None:
        seen.append(line)

    async def requests() -> Any:
        for i in range(15):
            yield entry(f"it-{i}")

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        _, stats = await run_job(
            tmp_path, emu.url, source=requests(), output=on_result, state=tmp_path / "s.db"
        )
    assert sorted(r.custom_id for r in seen) == sorted(f"it-{i}" for i in range(15))
    assert stats.finished
    assert stats.written == 15


async def test_a_line_too_long_for_any_batch_is_rejected_unread_and_the_rest_goes_on(
    tmp_path: Path,
) -> None:
    # Line 10 is 300 kB, a batch holds 100 kB: it is skipped in 4 kB reads, never held
    # whole, and rejected with its custom_id; the job finishes and a re-run sends nothing.
    huge = msgspec.json.encode(entry("huge", "x" * 300_000))
    ids = write_input(tmp_path / "in.jsonl", 30, {10: huge})
    config = msgspec.structs.replace(FAST, max_batch_bytes=100_000)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="test-key", base_url=emu.url) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=config, client=client
            )
            pipeline._source_chunk_size = 4096
            with anyio.fail_after(30):
                stats = await pipeline.run()
        _, again = await run_job(tmp_path, emu.url, config)
        assert sum(emu.submissions().values()) == 30
    assert sorted(r.custom_id for r in read_results(tmp_path / "out.jsonl")) == sorted(ids)
    [reject] = [
        msgspec.json.decode(x) for x in (tmp_path / "out.rejects.jsonl").read_bytes().splitlines()
    ]
    assert (reject["line"], reject["custom_id"]) == (10, "huge")
    assert reject["error"]["type"] == "request_too_large"
    assert reject["error"]["message"].startswith(f"line is {len(huge):,} bytes; a batch body")
    assert stats.finished
    assert (stats.read, stats.rejected, stats.written) == (31, 1, 30)
    assert again.finished
    assert again.written == 30


async def test_a_json_array_passed_for_jsonl_is_one_reject_that_says_so(tmp_path: Path) -> None:
    array = msgspec.json.encode([entry(f"req-{i}", "y" * 1000) for i in range(500)])
    (tmp_path / "in.json").write_bytes(array)  # 0.5 MB, no newline at all
    config = msgspec.structs.replace(FAST, max_batch_bytes=100_000)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        _, stats = await run_job(tmp_path, emu.url, config, source=tmp_path / "in.json")
        assert emu.submissions() == {}
    [reject] = [
        msgspec.json.decode(x) for x in (tmp_path / "out.rejects.jsonl").read_bytes().splitlines()
    ]
    assert (reject["line"], reject["custom_id"]) == (1, None)
    assert reject["error"]["message"].endswith(
        "skipped unread (is the input one JSON document rather than JSONL?)"
    )
    assert stats.finished
    assert (stats.read, stats.rejected, stats.written) == (1, 1, 0)


async def test_rerun_of_finished_job_is_a_noop_that_reports_the_jobs_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from pipeline._summary import render_summary

    write_input(tmp_path / "in.jsonl", 5, {2: b"{not json", 4: b'{"custom_id": "no params"}'})
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        await run_job(tmp_path, emu.url)
        before = (tmp_path / "out.jsonl").read_bytes()
        caplog.set_level(logging.INFO, logger="pipeline")
        _, stats = await run_job(tmp_path, emu.url)
        assert sum(emu.submissions().values()) == 5  # nothing sent again
    assert (tmp_path / "out.jsonl").read_bytes() == before
    # the job's real counts, from the state file, not the zeros of this no-op run
    assert stats.finished
    assert (stats.read, stats.rejected, stats.submitted, stats.written) == (7, 2, 5, 5)
    assert stats.total == 5
    [notice] = [r for r in caplog.records if "already finished" in r.getMessage()]
    assert notice.levelno == logging.WARNING
    summary = render_summary(stats, output=str(tmp_path / "out.jsonl"))
    assert "read 7" in summary
    assert "written 5" in summary
    assert "rejected 2" in summary
    assert "succeeded 0" not in summary  # the state file keeps no count per outcome


async def test_graceful_stop_then_resume(tmp_path: Path) -> None:
    ids = write_input(tmp_path / "in.jsonl", 50)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            seen = 0
            stopped = anyio.Event()
            pipeline: Pipeline

            async def stop_after_first(line: bytes) -> None:
                nonlocal seen
                seen += 1
                if seen == 1:
                    pipeline.stop("test")
                    stopped.set()

            from pipeline.stages.sink import JsonlSink

            class StopAfterFirst(JsonlSink):
                async def write(self, lines: list[bytes]) -> None:
                    for line in lines:
                        await stop_after_first(line)
                    await super().write(lines)

            sink = StopAfterFirst(tmp_path / "out.jsonl")
            pipeline = Pipeline(
                tmp_path / "in.jsonl",
                sink,
                tmp_path / "rej.jsonl",
                config=msgspec.structs.replace(FAST, max_in_flight=10, buffer_size=1),
                client=client,
                state=tmp_path / "state.db",
            )
            with anyio.fail_after(30):
                first = await pipeline.run()
            assert first.stopped_reason == "test"
            assert not first.finished
            assert first.written < 50
            second = Pipeline(
                tmp_path / "in.jsonl",
                JsonlSink(tmp_path / "out.jsonl"),
                tmp_path / "rej.jsonl",
                config=FAST,
                client=client,
                state=tmp_path / "state.db",
            )
            with anyio.fail_after(30):
                stats = await second.run()
        submissions = emu.submissions()
    assert stats.finished
    results = read_results(tmp_path / "out.jsonl")
    assert sorted(r.custom_id for r in results) == sorted(ids)
    assert all(n == 1 for n in submissions.values())


async def settle(pipeline: Pipeline) -> None:
    """Wait (in tiny steps, bounded) until the pipeline's counts stop moving."""
    last, still = None, 0
    for _ in range(1000):
        stats = pipeline.statistics()
        now = (stats.read, stats.submitted, stats.ended, stats.written)
        still = still + 1 if now == last else 0
        if still >= 30:
            return
        last = now
        await anyio.sleep(0.005)


async def test_stalled_sink_stops_the_source(tmp_path: Path) -> None:
    """Backpressure is real: while the sink is blocked, reading stays bounded."""
    write_input(tmp_path / "in.jsonl", 400)
    release = anyio.Event()
    blocked = anyio.Event()

    async def stalled(line: ResultLine) -> None:
        blocked.set()
        await release.wait()

    config = PipelineConfig(
        max_batch_requests=10,
        max_in_flight=20,
        linger_seconds=0.01,
        poll_interval=0.01,
        max_poll_interval=0.05,
        buffer_size=1,
        dry_run="off",
    )
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl",
                stalled,
                config=config,
                client=client,
                state=tmp_path / "s.db",
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipeline.run)
                with anyio.fail_after(10):
                    await blocked.wait()
                # let everything upstream run into the backpressure
                await settle(pipeline)
                stats = pipeline.statistics()
                # the file is read in one chunk (all 400 lines), but what got past
                # validation and was submitted is bounded by the in-flight cap
                assert stats.submitted <= config.max_in_flight
                assert stats.in_flight <= config.max_in_flight
                tg.cancel_scope.cancel()


async def test_stalled_sink_bounds_lines_read(tmp_path: Path) -> None:
    """With a small read chunk, the source itself stops reading."""
    from pipeline.stages import source as source_module

    write_input(tmp_path / "in.jsonl", 2000)
    release = anyio.Event()
    blocked = anyio.Event()

    async def stalled(line: ResultLine) -> None:
        blocked.set()
        await release.wait()

    config = PipelineConfig(
        max_batch_requests=10,
        max_in_flight=20,
        linger_seconds=0.01,
        poll_interval=0.01,
        max_poll_interval=0.05,
        buffer_size=1,
        dry_run="off",
    )
    old = source_module.DEFAULT_CHUNK_SIZE
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl",
                stalled,
                config=config,
                client=client,
                state=tmp_path / "s.db",
            )
            pipeline._source_chunk_size = 4096  # ~35 lines per read
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipeline.run)
                with anyio.fail_after(10):
                    await blocked.wait()
                await settle(pipeline)
                read = pipeline.statistics().read
                assert read < 400, read  # of 2000: the source stopped reading
                tg.cancel_scope.cancel()
    assert source_module.DEFAULT_CHUNK_SIZE == old


async def test_cancel_leaves_no_task_stream_or_file(tmp_path: Path) -> None:
    import asyncio

    write_input(tmp_path / "in.jsonl", 200)
    fds_before = set(os.listdir("/proc/self/fd"))
    tasks_before = asyncio.all_tasks()
    async with serve_emulator(EmulatorConfig(batch_seconds=5.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(
                tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=FAST, client=client
            )
            with anyio.move_on_after(0.5):
                await pipeline.run()
        fds_client_closed = set(os.listdir("/proc/self/fd"))
    assert asyncio.all_tasks() - tasks_before == set()
    # the input, output, rejects and state files are all closed
    names = {
        os.readlink(f"/proc/self/fd/{fd}")
        for fd in fds_client_closed - fds_before
        if os.path.exists(f"/proc/self/fd/{fd}")
    }
    assert not [n for n in names if str(tmp_path) in n and "/e/" not in n], names


async def test_stage_failure_surfaces_as_one_stage_error(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 5)

    async def failing(line: ResultLine) -> None:
        raise ValueError("sink is broken")

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        with pytest.raises(StageError) as info:
            await run_job(tmp_path, emu.url, output=failing, state=tmp_path / "s.db")
    assert info.value.stage == "results"
    assert isinstance(info.value.__cause__, ValueError)


@pytest.mark.parametrize(
    ("output", "rejects", "state", "message"),
    [
        ("in.jsonl", None, None, "the output file {d}/in.jsonl is the input file"),
        ("out.jsonl", "in.jsonl", None, "the rejects file {d}/in.jsonl is the input file"),
        ("out.jsonl", "out.jsonl", None, "the rejects file {d}/out.jsonl is the output file"),
        ("out.jsonl", None, "in.jsonl", "the state file {d}/in.jsonl is the input file"),
        ("link.jsonl", None, None, "the output file {d}/link.jsonl is the input file"),
        ("hard.jsonl", None, None, "the output file {d}/hard.jsonl is the input file"),
    ],
)
def test_a_job_never_writes_over_its_input_or_one_file_twice(
    tmp_path: Path, output: str, rejects: str | None, state: str | None, message: str
) -> None:
    source = tmp_path / "in.jsonl"
    write_input(source, 3)
    (tmp_path / "link.jsonl").symlink_to(source)
    os.link(source, tmp_path / "hard.jsonl")
    with pytest.raises(UsageError) as raised:
        Pipeline(
            source,
            tmp_path / output,
            tmp_path / rejects if rejects else None,
            state=tmp_path / state if state else None,
            overwrite=True,
        )
    assert str(raised.value).startswith(message.format(d=tmp_path))
    assert source.read_bytes().count(b"\n") == 3


async def test_an_output_in_a_missing_directory_is_one_clear_error(tmp_path: Path) -> None:
    write_input(tmp_path / "in.jsonl", 3)
    pipeline = Pipeline(tmp_path / "in.jsonl", tmp_path / "nope" / "out.jsonl", config=FAST)
    with pytest.raises(UsageError) as raised:
        await pipeline.run()
    assert str(raised.value) == (
        f"the output file {tmp_path}/nope/out.jsonl cannot be written: its directory "
        f"{tmp_path}/nope does not exist"
    )
    assert not (tmp_path / "nope").exists()


async def test_a_missing_input_is_a_usage_error_before_anything_is_opened(
    tmp_path: Path,
) -> None:
    pipeline = Pipeline(tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=FAST)
    with pytest.raises(UsageError) as raised:
        await pipeline.run()
    assert str(raised.value) == f"the input file {tmp_path}/in.jsonl does not exist"
    assert list(tmp_path.iterdir()) == []  # no state, no output, no emulator directory


@pytest.mark.parametrize(
    ("compress", "kind"),
    [
        (gzip.compress, "gzip-compressed"),
        (bz2.compress, "bzip2-compressed"),
        (lzma.compress, "xz-compressed"),
        (lambda data: b"\x28\xb5\x2f\xfd" + data, "zstd-compressed"),  # its magic number
        (lambda data: data.decode().encode("utf-16"), "UTF-16 text"),  # with a byte order mark
    ],
)
async def test_a_compressed_input_is_one_usage_error_not_a_reject_per_line(
    tmp_path: Path, compress: Callable[[bytes], bytes], kind: str
) -> None:
    write_input(tmp_path / "plain.jsonl", 50)
    source = tmp_path / "in.jsonl.gz"
    source.write_bytes(compress((tmp_path / "plain.jsonl").read_bytes()))
    pipeline = Pipeline(source, tmp_path / "out.jsonl", config=FAST)
    with pytest.raises(UsageError, match=f"the input {source} is {kind}, not JSONL: "):
        await pipeline.run()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.jsonl.gz", "plain.jsonl"]


async def test_a_jsonl_file_whose_first_line_is_garbage_is_not_taken_for_compressed(
    tmp_path: Path,
) -> None:
    (tmp_path / "in.jsonl").write_bytes(b"BZh9 not bzip2\n" + b"PK but text\n")
    pipeline = Pipeline(tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=FAST)
    with anyio.fail_after(30):
        stats = await pipeline.run()
    assert stats.rejected == 2  # its lines are the validate stage's to reject


async def test_a_gateway_named_in_the_environment_is_used_as_the_sdk_uses_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = write_input(tmp_path / "in.jsonl", 12)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "emu") as emu:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", emu.url)
        monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-from-the-shell-0123456789")
        pipeline = Pipeline(tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=FAST)
        with anyio.fail_after(30):
            stats = await pipeline.run()
        assert sorted(emu.submissions()) == sorted(ids)  # sent there, not to the service
    assert stats.finished
    assert not (tmp_path / "out.jsonl.state.emulator").exists()  # no embedded emulator


async def test_a_bearer_token_in_the_environment_is_used_and_kept_out_of_the_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = "gw-token-from-the-shell-0123456789"
    ids = write_input(tmp_path / "in.jsonl", 5)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "emu") as emu:
        monkeypatch.setenv("ANTHROPIC_BASE_URL", emu.url)
        monkeypatch.setenv("ANTHROPIC_AUTH_TOKEN", token)  # and no API key
        pipeline = Pipeline(tmp_path / "in.jsonl", tmp_path / "out.jsonl", config=FAST)
        with anyio.fail_after(30):
            stats = await pipeline.run()
        assert sorted(emu.submissions()) == sorted(ids)
    assert stats.finished
    for path in tmp_path.iterdir():
        if path.is_file():
            assert token.encode() not in path.read_bytes(), path


class _CreateHeld(Client):
    """A real client whose first batch create waits until ``release`` is set."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.creating = anyio.Event()
        self.release = anyio.Event()

    async def create_batch(self, body: bytes, *, request_count: int) -> Any:
        self.creating.set()
        await self.release.wait()
        return await super().create_batch(body, request_count=request_count)


async def test_lines_appended_after_the_input_was_read_are_said_when_the_job_finishes(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = tmp_path / "in.jsonl"
    ids = write_input(source, 5)
    read_size = source.stat().st_size
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "emu") as emu:
        async with _CreateHeld(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(source, tmp_path / "out.jsonl", config=FAST, client=client)
            with anyio.fail_after(30), caplog.at_level("WARNING", logger="pipeline"):
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pipeline.run)
                    await client.creating.wait()  # the source has read the file to its end
                    with source.open("ab") as f:  # a producer appends meanwhile
                        f.write(msgspec.json.encode(entry("late-1")) + b"\n")
                    client.release.set()
        assert sorted(emu.submissions()) == sorted(ids)  # the late line was not sent...
    assert pipeline.statistics().finished
    [warning] = [r for r in caplog.records if "grew while the job ran" in r.getMessage()]
    assert f"read to byte {read_size:,} and now has {source.stat().st_size:,} bytes" in (
        warning.getMessage()
    )  # ...and the run says so


def test_a_pipeline_needs_a_state_path_for_a_callback_output() -> None:
    async def cb(line: ResultLine) -> None: ...

    with pytest.raises(UsageError):
        Pipeline([entry("a")], cb)


async def test_a_source_stage_runs_until_stopped_and_resumes_numbering(tmp_path: Path) -> None:
    from pipeline.stages._items import RawLine

    starts: list[int] = []

    async def my_source(send: Any, /, *, stop: anyio.Event, start_line: int) -> None:
        starts.append(start_line)
        lines = [
            RawLine(start_line + i, msgspec.json.encode(entry(f"s{start_line}-{i}")), -1)
            for i in (1, 2, 3, 4, 5)
        ]
        await send.send(lines[:2])
        await send.send(lines[2:])
        await stop.wait()  # a source that never runs dry

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            for run in (1, 2):
                pipeline = Pipeline(my_source, tmp_path / "out.jsonl", config=FAST, client=client)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(pipeline.run)
                    with anyio.fail_after(10):
                        while pipeline.statistics().written < 5 * run:
                            await anyio.sleep(0.005)
                    pipeline.stop("enough")
                stats = pipeline.statistics()
                assert stats.stopped_reason == "enough"
                assert not stats.finished
    assert starts == [0, 5]  # the second run numbers on after the first
    written = sorted(r.custom_id for r in read_results(tmp_path / "out.jsonl"))
    assert written == sorted([f"s0-{i}" for i in range(1, 6)] + [f"s5-{i}" for i in range(1, 6)])


async def test_embedded_emulator_is_announced_on_the_pipeline_logger(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    import gc

    write_input(tmp_path / "in.jsonl", 3)
    frozen: list[int] = []

    async def on_result(line: ResultLine) -> None:
        frozen.append(gc.get_freeze_count())

    caplog.set_level(logging.INFO, logger="pipeline")
    pipeline = Pipeline(
        tmp_path / "in.jsonl",
        on_result,
        config=FAST,
        state=tmp_path / "s.db",
        emulator_dir=tmp_path / "emu",
    )
    with anyio.fail_after(20):
        stats = await pipeline.run()
    assert stats.written == 3
    notices = [r for r in caplog.records if "local emulator" in r.getMessage()]
    assert notices
    assert notices[0].name == "pipeline"
    assert notices[0].levelno == logging.INFO
    assert min(frozen) > 0  # the heap was frozen while the job ran
    assert gc.get_freeze_count() == 0  # and thawed after
