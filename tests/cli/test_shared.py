"""The event loop the commands run on (``pipeline.cli.shared.event_loop_options``)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

import anyio
import pytest

from pipeline.cli.shared import event_loop_options


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


@pytest.mark.skipif(
    sys.platform == "win32" or sys.implementation.name != "cpython",
    reason="uvloop is a dependency on CPython outside Windows only",
)
def test_the_commands_run_on_uvloop_where_it_is_a_dependency() -> None:
    options = event_loop_options()
    assert options == {"use_uvloop": True}
    assert anyio.run(_loop_module, backend_options=options).startswith("uvloop")


def test_without_uvloop_the_commands_run_on_asyncio(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.util.find_spec

    def find_spec(name: str, package: str | None = None) -> object:
        return None if name == "uvloop" else real(name, package)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    options = event_loop_options()
    assert options == {}
    assert anyio.run(_loop_module, backend_options=options).startswith("asyncio")
