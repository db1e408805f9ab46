from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from pathlib import Path


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    """Where a command's job keeps its state."""
    return tmp_path / "job.state"
