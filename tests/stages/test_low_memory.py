"""One chunk at a time (``PipelineConfig.low_memory``): the chunker's handshake with the
submitter (``ChunkHandoff``), and create bodies read back from the input file."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline import PipelineConfig
from pipeline.api import SplicedBody
from pipeline.stages import Chunk, ChunkHandoff, Entry, Flush, RawLine, chunker
from pipeline.stages.submitter import InputBody, InputChangedError
from pipeline.stages.validate import Validator

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "claude-3-haiku-20240307"
#: the chunker never lingers on its own in these tests (a partial chunk goes on a Flush)
CONFIG = PipelineConfig(max_batch_requests=2, linger_seconds=1000.0, dry_run="off")


def line(cid: str, text: str = "hi") -> bytes:
    params = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": text}]}
    return msgspec.json.encode({"custom_id": cid, "params": params})


def entries(*ids: str) -> list[Entry | Flush]:
    return [Entry(i + 1, cid, line(cid)) for i, cid in enumerate(ids)]


def ids_of(chunk: Chunk) -> list[str]:
    return [e.custom_id for e in chunk.entries]


async def test_the_chunker_takes_no_input_while_the_submitter_holds_a_chunk() -> None:
    handoff = ChunkHandoff()
    send_in, recv_in = anyio.create_memory_object_stream[list[Any]](0)
    send_out, recv_out = anyio.create_memory_object_stream[Chunk](0)
    submitter_end = handoff.receiver(recv_out)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: chunker(recv_in, send_out, config=CONFIG, handoff=handoff))
        await send_in.send(entries("a", "b"))
        first = await submitter_end.receive()
        assert ids_of(first) == ["a", "b"]
        # the submitter holds "a", "b": the chunker packs nothing, so takes no input
        await anyio.wait_all_tasks_blocked()
        with pytest.raises(anyio.WouldBlock):
            send_in.send_nowait(entries("c", "d"))
        assert handoff.pending == 1
        # asking for the next chunk lets go of the last: the chunker takes input again
        got: list[Chunk] = []

        async def next_chunk() -> None:
            got.append(await submitter_end.receive())

        tg.start_soon(next_chunk)
        await anyio.wait_all_tasks_blocked()
        assert handoff.pending == 0
        send_in.send_nowait(entries("c", "d"))
        await anyio.wait_all_tasks_blocked()
        assert [ids_of(c) for c in got] == [["c", "d"]]
        # the submitter ends while it holds "c", "d": the chunker does not wait on it
        await submitter_end.aclose()
        assert handoff.closed
        await anyio.wait_all_tasks_blocked()
        send_in.send_nowait([Flush(final=True)])  # taken at once: it waits for no one
        await send_in.aclose()


async def test_without_the_handshake_the_chunker_packs_while_a_chunk_is_held() -> None:
    """What ``low_memory`` changes: by default the next chunk is packed meanwhile."""
    send_in, recv_in = anyio.create_memory_object_stream[list[Any]](0)
    send_out, recv_out = anyio.create_memory_object_stream[Chunk](0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: chunker(recv_in, send_out, config=CONFIG))
        await send_in.send(entries("a", "b"))
        assert ids_of(await recv_out.receive()) == ["a", "b"]
        await anyio.wait_all_tasks_blocked()
        send_in.send_nowait(entries("c", "d"))  # taken while "a", "b" are held
        await send_in.aclose()
        assert ids_of(await recv_out.receive()) == ["c", "d"]
        await recv_out.aclose()
        tg.cancel_scope.cancel()


class Timer:
    """Virtual time for the linger: the delays asked for; the test fires them."""

    def __init__(self) -> None:
        self.now = 100.0
        self.delays: list[float] = []
        self.scopes: list[anyio.CancelScope] = []

    def clock(self) -> float:
        return self.now

    def __call__(self, delay: float) -> anyio.CancelScope:
        self.delays.append(delay)
        self.scopes.append(anyio.CancelScope())
        return self.scopes[-1]


async def test_the_linger_does_not_run_while_the_chunker_waits_for_the_submitter() -> None:
    config = msgspec.structs.replace(CONFIG, max_batch_requests=3, linger_seconds=5.0)
    handoff, timer = ChunkHandoff(), Timer()
    send_in, recv_in = anyio.create_memory_object_stream[list[Any]](0)
    send_out, recv_out = anyio.create_memory_object_stream[Chunk](0)
    submitter_end = handoff.receiver(recv_out)
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: chunker(
                recv_in,
                send_out,
                config=config,
                handoff=handoff,
                clock=timer.clock,
                timeout=timer,
            )
        )
        # "d" opens a partial chunk as "a", "b", "c" go to the submitter
        await send_in.send(entries("a", "b", "c", "d"))
        assert ids_of(await submitter_end.receive()) == ["a", "b", "c"]
        timer.now += 60.0  # the submitter holds it a minute
        got: list[Chunk] = []

        async def next_chunk() -> None:
            got.append(await submitter_end.receive())

        tg.start_soon(next_chunk)
        await anyio.wait_all_tasks_blocked()
        # the partial chunk still has its whole linger time, not 5 s - 60 s
        assert timer.delays == [5.0]
        assert got == []
        timer.now += 5.0
        timer.scopes[-1].cancel()
        await anyio.wait_all_tasks_blocked()
        assert [ids_of(c) for c in got] == [["d"]]
        await send_in.aclose()
        await submitter_end.aclose()


def write_lines(path: Path, lines: list[bytes]) -> list[RawLine]:
    """The file of ``lines`` (each with its own ending) and its lines as the source
    reads them (without the ``\\n``)."""
    path.write_bytes(b"".join(lines))
    raw, offset = [], 0
    for number, data in enumerate(lines, 1):
        raw.append(RawLine(number, data.removesuffix(b"\n"), offset))
        offset += len(data)
    return raw


async def test_a_body_read_back_from_the_input_is_the_body_of_its_lines(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [line(f"r{i}", "x" * (i % 7)) + b"\n" for i in range(40)]
    lines[5] = line("crlf") + b"\r\n"  # kept in memory: its bytes are not the line's
    lines[9] = b"\n"  # a blank line: the lines around it are not adjacent
    lines[12] = b"  " + line("spaced") + b" \n"  # blanks around the JSON: its bytes too
    lines[-1] = lines[-1].removesuffix(b"\n")  # no newline at the end of the file
    validator = Validator(max_batch_bytes=10_000, models=None)
    checked = [e for e in validator.check(write_lines(path, lines)) if type(e) is Entry]
    expected = bytes(SplicedBody([e.raw for e in checked]))
    send_in, recv_in = anyio.create_memory_object_stream[list[Any]](1)
    send_out, recv_out = anyio.create_memory_object_stream[Chunk](1)
    config = msgspec.structs.replace(CONFIG, max_batch_requests=100)
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: chunker(recv_in, send_out, config=config, drop_file_bytes=True))
        await send_in.send([*checked, Flush(final=True)])
        await send_in.aclose()
        async with recv_out:
            chunk = await recv_out.receive()
    # the bytes left the entries of the file's lines, not that of the CRLF line
    assert [e.custom_id for e in chunk.entries if e.raw] == ["crlf"]
    for piece_bytes in (1, 100, 1 << 20):  # any grouping of the reads
        body = InputBody(chunk.entries, path, piece_bytes)
        assert b"".join(body.pieces()) == expected
        assert len(body) == len(expected)
    # the input changed under the job: nothing wrong is sent, the reason is said
    path.write_bytes(b"".join(lines).replace(b'"r3"', b'"r3",\n'))
    with pytest.raises(InputChangedError, match="changed while the job ran"):
        bytes(InputBody(chunk.entries, path))
