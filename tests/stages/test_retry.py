"""The retry feeder: spooled requests back into the chunker."""

from __future__ import annotations

import re
from collections import Counter
from typing import TYPE_CHECKING, Any
from zlib import crc32

import anyio
import msgspec
import pytest

from pipeline import Client, Pipeline, StageError, read_status
from pipeline._config import PipelineConfig
from pipeline.ledger import SpoolItem
from pipeline.ledger._sqlite import SQLiteLedger
from pipeline.stages import (
    CHUNKER,
    POLLER,
    RESULTS,
    SUBMITTER,
    VALIDATE,
    JobCounters,
    JoinedResult,
    JsonlSink,
    StageSpec,
    chunker,
    process_results,
    submitter,
)
from pipeline.stages.retry import read_back, retry_feeder
from pipeline.stages.submitter import InputBody, InputChangedError
from pipeline.testing import EmulatorConfig, serve_emulator
from tests._helpers import FAST, entry, read_results, write_input

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path


async def test_a_feeder_cancelled_while_its_input_opens_still_ends_its_stream(
    tmp_path: Path,
) -> None:
    # A run that fails at once cancels the feeder while it opens the input: its
    # stream must still end (downstream sees the end, nothing is left open).
    (tmp_path / "in.jsonl").write_bytes(b"{}\n")
    send, receive = anyio.create_memory_object_stream[Any](1)
    with receive:
        with anyio.CancelScope() as scope:
            scope.cancel()
            await retry_feeder(
                send,
                ledger=SQLiteLedger(tmp_path / "state"),
                config=PipelineConfig(),
                progress=JobCounters(),
                path=tmp_path / "in.jsonl",
            )
        with pytest.raises(anyio.EndOfStream):
            receive.receive_nowait()


def _shift(data: bytes) -> bytes:
    """The input with a line put before the others: every line moves."""
    return msgspec.json.encode(entry("inserted", "a line added while the job ran")) + b"\n" + data


def _same_place(data: bytes) -> bytes:
    """The input with every line in its place and of its size, but ``req-`` ids
    renamed: each line now holds another custom_id."""
    return data.replace(b'"req-', b'"new-')


class _EditOnFirstWrite(JsonlSink):
    """The output, which edits the input when the first results come (before any
    request to retry is read back)."""

    def __init__(self, path: Path, source: Path, edit: Callable[[bytes], bytes]) -> None:
        super().__init__(path)
        self.source, self.edit, self.original = source, edit, source.read_bytes()

    async def write(self, lines: list[bytes]) -> None:
        if self.source.read_bytes() == self.original:
            self.source.write_bytes(self.edit(self.original))
        await super().write(lines)


@pytest.mark.parametrize("edit", [_shift, _same_place])
async def test_a_retry_of_a_line_that_changed_under_the_job_is_not_sent_and_a_rerun_completes(
    tmp_path: Path, edit: Callable[[bytes], bytes]
) -> None:
    # Requests to retry are read back from the input by offset. Once the input moved
    # (or its lines hold other ids), what is read there is not the request: sending
    # it would send another line's request again (paid twice) or a piece of a line
    # (a body the service refuses, its good requests rejected). The job stops
    # instead, naming the line; the requests wait in the spool.
    source = tmp_path / "in.jsonl"
    ids = write_input(source, 40)
    original = source.read_bytes()
    config = msgspec.structs.replace(FAST, max_attempts=10)
    emu_config = EmulatorConfig(batch_seconds=0.0, request_error_rate=0.3, seed=3)
    async with serve_emulator(emu_config, data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            out = _EditOnFirstWrite(tmp_path / "out.jsonl", source, edit)
            first = Pipeline(source, out, client=client, state=tmp_path / "s.db", config=config)
            with anyio.fail_after(30), pytest.raises(StageError) as failed:
                await first.run()
            reason = failed.value.__cause__
            assert isinstance(reason, InputChangedError)
            assert re.search(r"line \d+ \(custom_id 'req-\d+'\) is no longer at byte", str(reason))
            sent = emu.submissions()
            assert set(sent) <= set(ids)  # nothing of the changed input was sent
            held = await read_status(tmp_path / "s.db")
            assert held is not None
            assert held.spooled > 0  # the requests to retry wait there
            source.write_bytes(original)
            out = JsonlSink(tmp_path / "out.jsonl")
            again = Pipeline(source, out, client=client, state=tmp_path / "s.db", config=config)
            with anyio.fail_after(30):
                stats = await again.run()
        sent = emu.submissions()
    assert stats.finished
    assert (stats.written, stats.rejected) == (40, 0)
    assert Counter(r.custom_id for r in read_results(tmp_path / "out.jsonl")) == dict.fromkeys(
        ids, 1
    )
    assert set(sent) == set(ids)


async def test_a_processor_never_gets_a_request_read_back_from_a_changed_input(
    tmp_path: Path,
) -> None:
    # A result processor gets each result joined with its request, read back from
    # the input by offset. Once the lines hold other ids, what is read there is
    # another request: the job stops naming the line, it does not join the two.
    source = tmp_path / "in.jsonl"
    write_input(source, 40)
    original = source.read_bytes()
    joined: list[tuple[str, str]] = []

    def note(j: JoinedResult) -> dict[str, str]:
        joined.append((j.custom_id, j.request["custom_id"]))
        if source.read_bytes() == original:  # after the first result's request
            source.write_bytes(_same_place(original))
        return {"custom_id": j.custom_id}

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        async with Client(api_key="k", base_url=emu.url) as client:
            job = Pipeline(
                source,
                tmp_path / "out.jsonl",
                client=client,
                state=tmp_path / "s.db",
                config=FAST,
                stages=[process_results(note)],
            )
            with anyio.fail_after(30), pytest.raises(StageError) as failed:
                await job.run()
    assert isinstance(failed.value.__cause__, InputChangedError)
    assert joined
    assert all(result == request for result, request in joined)  # never another's


async def test_a_round_of_retries_waits_without_its_bytes_and_is_sent_as_its_lines(
    tmp_path: Path,
) -> None:
    # A round of requests to send again (up to a batch's worth: 6.8 MB at ten
    # million) waits in the chunker's queue beside the source's lines. Each keeps
    # only the CRC-32 of its line, which the body reads again as it is sent: the body
    # is the lines' own, byte for byte. A line ending in "\r\n" keeps its bytes (the
    # body reads a line up to a lone "\n").
    source = tmp_path / "in.jsonl"
    lines = [msgspec.json.encode(entry(f"req-{i}", f"question {i}")) for i in range(6)]
    ends = [b"\n", b"\n", b"\r\n", b"\n", b"\n", b"\n"]
    source.write_bytes(b"".join(line + end for line, end in zip(lines, ends, strict=True)))
    offsets = [0]
    for line, end in zip(lines, ends, strict=True):
        offsets.append(offsets[-1] + len(line) + len(end))
    spooled = [  # lines 5, 1, 2, 3 to send again, in the spool's order
        SpoolItem(f"req-{i}", i + 1, 2, offsets[i], offsets[i + 1] - offsets[i], None)
        for i in (4, 0, 1, 2)
    ]
    async with await anyio.open_file(source, "rb") as handle:
        kept = await read_back(spooled, handle, source)
        light = await read_back(spooled, handle, source, drop_file_bytes=True)
    assert [e.raw for e in kept] == [lines[i] for i in (4, 0, 1, 2)]
    assert [e.raw for e in light] == [b"", b"", b"", lines[2]]  # the "\r\n" line keeps them
    assert [e.crc32 for e in light[:3]] == [crc32(lines[i]) for i in (4, 0, 1)]
    assert [(e.custom_id, e.line, e.offset, e.end) for e in light] == [
        (e.custom_id, e.line, e.offset, e.end) for e in kept
    ]
    body = InputBody(light, source)
    sent = b"".join(body.pieces())
    # the create body of the API contract: the lines, as they are, in one array
    assert sent == b'{"requests":[' + b",".join(e.raw for e in kept) + b"]}"
    assert body.size == len(sent)
    # changed after the round was read back: the body stops before its end
    source.write_bytes(source.read_bytes().replace(b"question 4", b"question X"))
    with pytest.raises(InputChangedError, match=r"line 5 \(custom_id 'req-4'\)"):
        b"".join(InputBody(light, source).pieces())


def _answer(result: Any) -> tuple[list[str], int]:
    """A succeeded result's text and input tokens (what its request decides; the
    message's id differs from one emulator to the next)."""
    message = result.message
    return [block["text"] for block in message.content], message.usage.input_tokens


async def _own_chunker(receive: Any, send: Any, /, **options: Any) -> None:
    await chunker(receive, send, **options)


async def _own_submitter(receive: Any, send: Any, /, **options: Any) -> None:
    await submitter(receive, send, **options)


@pytest.mark.parametrize(
    ("newline", "own"),
    [
        (b"\n", None),
        (b"\r\n", None),
        (b"\n", CHUNKER.replaced_by(_own_chunker)),
        (b"\n", SUBMITTER.replaced_by(_own_submitter)),
    ],
    ids=["lf", "crlf", "own-chunker", "own-submitter"],
)
async def test_requests_sent_again_are_answered_as_their_own_lines(
    tmp_path: Path, newline: bytes, own: StageSpec | None
) -> None:
    # With three requests in ten failing at each try, most are sent more than once,
    # read back from the input each time. Each answer must be the one its own line
    # gets in a job where nothing fails: the request sent again was its line. A
    # chunker or submitter of the user's own is given each request's bytes.
    source = tmp_path / "in.jsonl"
    ids = write_input(source, 60)
    source.write_bytes(source.read_bytes().replace(b"\n", newline))
    config = msgspec.structs.replace(FAST, max_attempts=20)
    stages = None
    if own is not None:
        standard = [VALIDATE, CHUNKER, SUBMITTER, POLLER, RESULTS]
        stages = [own if s.name == own.name else s for s in standard]
    answers: dict[str, dict[str, tuple[list[str], int]]] = {}
    for faults, name in ((0.0, "clean"), (0.3, "faulty")):
        emu_config = EmulatorConfig(batch_seconds=0.0, request_error_rate=faults, seed=5)
        async with serve_emulator(emu_config, data_dir=tmp_path / f"e-{name}") as emu:
            async with Client(api_key="k", base_url=emu.url) as client:
                job = Pipeline(
                    source,
                    tmp_path / f"{name}.jsonl",
                    client=client,
                    state=tmp_path / f"{name}.db",
                    config=config,
                    stages=stages,
                )
                with anyio.fail_after(30):
                    stats = await job.run()
            sent = emu.submissions()
        assert stats.finished
        assert (stats.written, stats.rejected) == (60, 0)
        if faults:
            assert sum(sent.values()) > 60  # requests were sent again
        results = read_results(tmp_path / f"{name}.jsonl")
        assert sorted(r.custom_id for r in results) == sorted(ids)
        answers[name] = {r.custom_id: _answer(r.result) for r in results}
    assert answers["faulty"] == answers["clean"]
