from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from pipeline.ledger import SQLiteLedger

from ._helpers import JOB

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "job.state"


@pytest.fixture
async def ledger(state_path: Path) -> AsyncIterator[SQLiteLedger]:
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    try:
        yield led
    finally:
        await led.aclose()
