"""A restart with a create of unknown outcome: the create is settled beside the
job's stages, not before them, so batches in flight are collected and the input
is read meanwhile; only new creates wait."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec

from pipeline import Client, Pipeline, PipelineConfig
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

    import pytest

    from pipeline.api import MessageBatch

CONFIG = PipelineConfig(
    max_batch_requests=5,
    max_in_flight=100,
    linger_seconds=0.01,
    poll_interval=0.01,
    max_poll_interval=0.05,
    dry_run="off",
)
IDS = [f"req-{i:02d}" for i in range(15)]


class StuckClient(Client):
    """A real client whose second create hangs after it was recorded as sending (a
    worker killed in the middle of the POST)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.creates = 0
        self.stuck = anyio.Event()

    async def create_batch(self, body: bytes, *, request_count: int) -> MessageBatch:
        self.creates += 1
        if self.creates == 2:
            self.stuck.set()
            await anyio.sleep_forever()
        return await super().create_batch(body, request_count=request_count)


def write_input(path: Path) -> None:
    lines = [
        msgspec.json.encode(
            {
                "custom_id": cid,
                "params": {
                    "model": "claude-3-haiku-20240307",
                    "max_tokens": 8,
                    "messages": [{"role": "user", "content": f"say {cid}"}],
                },
            }
        )
        for cid in IDS
    ]
    path.write_bytes(b"\n".join(lines) + b"\n")


async def test_batches_in_flight_are_collected_while_an_unknown_create_settles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_input(tmp_path / "in.jsonl")
    paths = (tmp_path / "in.jsonl", tmp_path / "out.jsonl", tmp_path / "rejects.jsonl")
    async with serve_emulator(EmulatorConfig(batch_seconds=0.5)) as emu:
        stuck = StuckClient(api_key="k", base_url=emu.url)
        async with stuck:  # batch 1 created, batch 2's POST hangs: crash
            with anyio.CancelScope() as scope:
                async with anyio.create_task_group() as tg:
                    tg.start_soon(Pipeline(*paths, config=CONFIG, client=stuck).run)
                    with anyio.fail_after(20):
                        await stuck.stuck.wait()
                    scope.cancel()
        assert sorted(emu.submissions()) == IDS[:5]

        # restart: the list is not authoritative for an hour; batch 1 is collected
        # and the whole input read meanwhile, no new create is sent
        monkeypatch.setenv("PIPELINE_RECONCILE_SETTLE_SECONDS", "3600")
        async with Client(api_key="k", base_url=emu.url) as client:
            pipeline = Pipeline(*paths, config=CONFIG, client=client)
            async with anyio.create_task_group() as tg:
                tg.start_soon(pipeline.run)
                with anyio.fail_after(20):
                    while pipeline.statistics().written < 5 or pipeline.statistics().read < 15:
                        await anyio.sleep(0.01)
                assert sorted(emu.submissions()) == IDS[:5]
                pipeline.stop()
            assert not pipeline.statistics().finished

            monkeypatch.setenv("PIPELINE_RECONCILE_SETTLE_SECONDS", "0")
            with anyio.fail_after(20):
                stats = await Pipeline(*paths, config=CONFIG, client=client).run()
        assert stats.finished
        assert emu.submissions() == dict.fromkeys(IDS, 1)
    written = [msgspec.json.decode(x)["custom_id"] for x in paths[1].read_bytes().splitlines()]
    assert sorted(written) == IDS
