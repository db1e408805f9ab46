"""Every public module's ``__all__`` names exactly what it defines for users."""

from __future__ import annotations

import importlib
import types

import pytest

PUBLIC_MODULES = [
    "pipeline",
    "pipeline.api",
    "pipeline.stages",
    "pipeline.ledger",
    "pipeline.emulator",
    "pipeline.testing",
]


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_is_complete_and_resolves(name: str) -> None:
    module = importlib.import_module(name)
    exported = getattr(module, "__all__", ())
    for attr in exported:
        assert hasattr(module, attr), f"{name}.__all__ names missing {attr!r}"
    public = {
        key
        for key, value in vars(module).items()
        if not key.startswith("_")
        and not isinstance(value, types.ModuleType)
        and getattr(value, "__module__", name).startswith("pipeline")
        and key not in {"annotations"}
    }
    assert public <= set(exported), (
        f"{name} defines public names not in __all__: {public - set(exported)}"
    )
