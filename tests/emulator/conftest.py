from __future__ import annotations

from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import pytest

from pipeline.emulator import EmulatorConfig, ManualClock, create_app

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from pipeline.emulator import EmulatorApp

MODEL = "claude-3-haiku-20240307"
KEY = "sk-test-key-1"
VERSION = "2023-06-01"


def params(text: str = "hello", max_tokens: int = 100, **extra: Any) -> dict[str, Any]:
    return {
        "model": MODEL,
        "max_tokens": max_tokens,
        "messages": [{"role": "user", "content": text}],
        **extra,
    }


def batch_body(n: int, prefix: str = "r", **extra: Any) -> dict[str, Any]:
    return {
        "requests": [
            {"custom_id": f"{prefix}{i}", "params": params(f"question {i}", **extra)}
            for i in range(n)
        ]
    }


def lines(text: bytes) -> list[dict[str, Any]]:
    assert b"\r" not in text
    parts = text.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    assert all(parts), "blank line in the results"
    return [msgspec.json.decode(p) for p in parts]


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def make_app(tmp_path: Path, clock: ManualClock) -> Iterator[Callable[..., EmulatorApp]]:
    apps: list[EmulatorApp] = []

    def make(data_dir: Path | None = None, **overrides: Any) -> EmulatorApp:
        """An app on a data directory of its own, or on ``data_dir`` (a restart)."""
        overrides.setdefault("clock", clock)
        if data_dir is None:
            data_dir = tmp_path / f"emu{len(apps)}"
        app = create_app(EmulatorConfig(**overrides), data_dir=data_dir)
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


def asgi_client(app: EmulatorApp, key: str | None = KEY) -> httpx.AsyncClient:
    headers = {"anthropic-version": VERSION}
    if key is not None:
        headers["x-api-key"] = key
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://emulator.test", headers=headers
    )
