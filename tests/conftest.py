from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # aiofiles is asyncio-only, so every async test runs on asyncio.
    return "asyncio"
