"""The dry run lets checked shapes flow past a shape still being checked. A crash
while entries are held must still lose nothing and pay nothing twice: the source
checkpoint never passes a held entry, and lines read again after a restart that
were already accounted for are skipped, not rejected as duplicates."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pipeline._config import PipelineConfig
from pipeline._pipeline import Pipeline
from pipeline.api._client import Client
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

HAIKU = "claude-3-haiku-20240307"
SONNET = "claude-3-5-sonnet-20241022"
CONFIG = PipelineConfig(
    max_batch_requests=5,
    max_in_flight=100,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="count-tokens",
)


class HeldClient(Client):
    """A real client whose count_tokens for one model waits until released."""

    def __init__(self, *, hold_model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold_model = hold_model
        self.holding = anyio.Event()

    async def count_tokens(self, params: bytes) -> int:
        if self.hold_model.encode() in params:
            self.holding.set()
            await anyio.sleep_forever()
        return await super().count_tokens(params)


def line(cid: str, model: str) -> bytes:
    return msgspec.json.encode(
        {
            "custom_id": cid,
            "params": {
                "model": model,
                "max_tokens": 8,
                "messages": [{"role": "user", "content": f"about {cid}"}],
            },
        }
    )


#: line 1: the held shape; then 20 entries of a checked shape, and a bad line 11
LINES = [line("held-1", SONNET)] + [line(f"ok-{i:02d}", HAIKU) for i in range(20)]
LINES.insert(10, b"{not json")
EVERY_ID = ["held-1"] + [f"ok-{i:02d}" for i in range(20)]


async def crash_while_held(pipeline: Pipeline, client: HeldClient, check: Any = None) -> None:
    """Run until the checked shape has flowed past the held one and been written,
    call ``check()``, then crash: cancel everything, nothing graceful happens."""
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(pipeline.run)
            with anyio.fail_after(20):
                await client.holding.wait()
                while pipeline.statistics().written < 20:
                    await anyio.sleep(0.01)
            if check is not None:
                check()
            scope.cancel()


def assert_exactly_once(submissions: dict[str, int], out: Path, rejects: Path) -> None:
    assert sorted(submissions.items()) == [(cid, 1) for cid in sorted(EVERY_ID)]
    written = [msgspec.json.decode(x)["custom_id"] for x in out.read_bytes().splitlines()]
    assert sorted(written) == sorted(EVERY_ID)
    found = [msgspec.json.decode(x) for x in rejects.read_bytes().splitlines()]
    assert [(r["line"], r["error"]["type"]) for r in found] == [(11, "invalid_json")]


async def test_a_crash_while_a_shape_is_held_loses_nothing_and_pays_once(tmp_path: Path) -> None:
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(LINES) + b"\n")
    paths = (tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "rejects.jsonl")
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        held = HeldClient(hold_model=SONNET, api_key="k", base_url=emu.url)
        async with held:
            await crash_while_held(Pipeline(*paths, config=CONFIG, client=held), held)
        # the checked shape flowed past the held one and was paid for
        assert sorted(emu.submissions()) == EVERY_ID[1:]

        async with Client(api_key="k", base_url=emu.url) as client:
            with anyio.fail_after(20):
                stats = await Pipeline(*paths, config=CONFIG, client=client).run()
        assert stats.finished
        assert_exactly_once(emu.submissions(), paths[1], paths[2])


async def test_a_watched_file_stays_taken_until_the_ledger_holds_all_its_lines(
    tmp_path: Path,
) -> None:
    from pipeline._worker import WatchPipeline

    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "a.jsonl.tmp").write_bytes(b"\n".join(LINES) + b"\n")
    (inbox / "a.jsonl.tmp").rename(inbox / "a.jsonl")
    out, rejects = tmp_path / "out.jsonl", tmp_path / "rejects.jsonl"

    def make(client: Client) -> WatchPipeline:
        return WatchPipeline(inbox, out, rejects, poll_interval=0.01, config=CONFIG, client=client)

    def not_done() -> None:
        # every line was read and most were paid for, but line 1 is held: the
        # file is not done, whatever happens next
        assert [p.name for p in inbox.iterdir()] == ["a.jsonl.from-1.reading"]

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        held = HeldClient(hold_model=SONNET, api_key="k", base_url=emu.url)
        async with held:
            await crash_while_held(make(held), held, not_done)
        not_done()

        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = make(client)
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipeline.run)
                with anyio.fail_after(20):
                    while pipeline.statistics().written < 21:
                        await anyio.sleep(0.01)
                pipeline.stop()
        assert [p.name for p in inbox.iterdir()] == ["a.jsonl.done"]
        assert_exactly_once(emu.submissions(), out, rejects)


class GatedClient(Client):
    """A real client whose count_tokens for one model waits for ``gate``."""

    def __init__(self, *, hold_model: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.hold_model = hold_model
        self.holding = anyio.Event()
        self.gate = anyio.Event()

    async def count_tokens(self, params: bytes) -> int:
        if self.hold_model.encode() in params:
            self.holding.set()
            await self.gate.wait()
        return await super().count_tokens(params)


#: line 1 "dup" in the shape held; lines 2-21 a checked shape; line 22 copies line 1's
#: custom_id in the checked shape
DUP_LINES = [line("dup", SONNET)] + [line(f"ok-{i:02d}", HAIKU) for i in range(20)]
DUP_LINES.append(line("dup", HAIKU))


def dup_rejects(rejects: Path) -> list[tuple[int, str]]:
    found = [msgspec.json.decode(x) for x in rejects.read_bytes().splitlines()]
    return [(r["line"], r["error"]["message"]) for r in found]


def dup_models(out: Path) -> list[str]:
    lines = [msgspec.json.decode(x) for x in out.read_bytes().splitlines()]
    return [x["result"]["message"]["model"] for x in lines if x["custom_id"] == "dup"]


async def test_the_first_line_wins_a_custom_id_whose_shape_is_still_checked(
    tmp_path: Path,
) -> None:
    """Line 1's shape is held for its dry run while line 22, a later copy of its
    custom_id in a shape already checked, comes by: line 1 is still the one sent, and
    line 22 is the duplicate, naming line 1."""
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(DUP_LINES) + b"\n")
    paths = (tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "rejects.jsonl")
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        client = GatedClient(hold_model=SONNET, api_key="k", base_url=emu.url)
        async with client:
            pipeline = Pipeline(*paths, config=CONFIG, client=client)
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipeline.run)
                with anyio.fail_after(20):
                    await client.holding.wait()
                    while pipeline.statistics().written < 20:  # the checked shape went by
                        await anyio.sleep(0.01)
                client.gate.set()
        assert pipeline.statistics().finished
        sent = emu.submissions()
    assert sent["dup"] == 1
    assert dup_rejects(paths[2]) == [(22, "custom_id 'dup' already used on line 1")]
    assert dup_models(paths[1]) == [SONNET]


async def test_the_first_line_wins_a_custom_id_after_a_crash_while_it_was_held(
    tmp_path: Path,
) -> None:
    """The same, with a crash while line 1 is held and a restart: line 1 is sent, line
    22 is the duplicate (before, line 22 had been sent and line 1 was rejected as
    'already used on line 22')."""
    (tmp_path / "in.jsonl").write_bytes(b"\n".join(DUP_LINES) + b"\n")
    paths = (tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "rejects.jsonl")
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0)) as emu:
        held = HeldClient(hold_model=SONNET, api_key="k", base_url=emu.url)
        async with held:
            await crash_while_held(Pipeline(*paths, config=CONFIG, client=held), held)
        async with Client(api_key="k", base_url=emu.url) as client:
            with anyio.fail_after(20):
                stats = await Pipeline(*paths, config=CONFIG, client=client).run()
        assert stats.finished
        sent = emu.submissions()
    assert sent["dup"] == 1
    assert dup_rejects(paths[2]) == [(22, "custom_id 'dup' already used on line 1")]
    assert dup_models(paths[1]) == [SONNET]
