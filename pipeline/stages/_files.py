"""Opening files from a stage so that a cancel cannot leak them.

``aiofiles.open`` opens the file in a worker thread. A cancel that arrives while the
thread runs abandons the wait, and the file the thread then opens is dropped unclosed
(a ``ResourceWarning`` when the GC finds it). A run that fails at once cancels every
stage, often while one is opening its file. ``open_file`` lets the open finish (it is
quick), so the caller always gets the handle and closes it; the cancel is delivered at
the caller's next checkpoint. ``opened`` is the same for a block that reads a file:
it also closes it on the way out, cancelled or not.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Literal, overload

import aiofiles
import anyio

if TYPE_CHECKING:
    import os
    from collections.abc import AsyncIterator

    from aiofiles.threadpool.binary import AsyncBufferedIOBase, AsyncBufferedReader

__all__ = ("open_file", "opened")


@overload
async def open_file(path: str | os.PathLike[str], mode: Literal["rb"]) -> AsyncBufferedReader: ...


@overload
async def open_file(path: str | os.PathLike[str], mode: Literal["ab"]) -> AsyncBufferedIOBase: ...


async def open_file(
    path: str | os.PathLike[str], mode: Literal["rb", "ab"]
) -> AsyncBufferedReader | AsyncBufferedIOBase:
    """``await aiofiles.open(path, mode)``, not interrupted by a cancel."""
    with anyio.CancelScope(shield=True):
        handle = await (aiofiles.open(path, "rb") if mode == "rb" else aiofiles.open(path, "ab"))
    return handle


@asynccontextmanager
async def opened(path: str | os.PathLike[str]) -> AsyncIterator[AsyncBufferedReader]:
    """``path`` open for reading (``open_file``) for the block, closed after it even
    when the block is cancelled."""
    handle = await open_file(path, "rb")
    try:
        yield handle
    finally:
        with anyio.CancelScope(shield=True):
            await handle.close()
