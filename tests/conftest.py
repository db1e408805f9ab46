from __future__ import annotations

import pytest


@pytest.fixture
def anyio_backend() -> str:
    # aiofiles is asyncio-only, so every async test runs on asyncio.
    return "asyncio"


@pytest.fixture(autouse=True)
def _no_service_from_the_shell(monkeypatch: pytest.MonkeyPatch) -> None:
    """A key or gateway in the developer's shell never reaches a test (nor the
    commands the tests start): jobs without a client run on the embedded emulator."""
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_AUTH_TOKEN", raising=False)
