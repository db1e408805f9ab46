"""Files opened by stages: a cancel during the open must not leak the file."""

from __future__ import annotations

from typing import TYPE_CHECKING

import anyio

from pipeline.stages._files import open_file

if TYPE_CHECKING:
    from pathlib import Path


async def test_a_cancel_during_the_open_still_hands_over_the_file(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"abc")
    handle = None
    with anyio.CancelScope() as scope:
        scope.cancel()  # the open runs in a worker thread: this cancel waits for it
        handle = await open_file(tmp_path / "f", "rb")
    # the caller has the file to close (a plain aiofiles.open would have dropped it)
    assert handle is not None
    assert await handle.read() == b"abc"
    await handle.close()
