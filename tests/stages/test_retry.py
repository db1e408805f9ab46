"""The retry feeder: spooled requests back into the chunker."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import pytest

from pipeline._config import PipelineConfig
from pipeline.ledger._sqlite import SQLiteLedger
from pipeline.stages import JobCounters
from pipeline.stages.retry import retry_feeder

if TYPE_CHECKING:
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
