"""A source that never runs dry: a directory watched for new JSONL files.

For long-lived workers. Producers drop request files (``*.jsonl``, one batch
request entry a line, as for ``pipeline run``) into a directory; the source
picks up each new file once, oldest first, sends its lines like the JSONL file
source (the same ``LineReader``), and records what it took by renaming: a file
is claimed as ``NAME.jsonl.reading`` before its first line is sent, and becomes
``NAME.jsonl.done`` once every line has been handed to the pipeline. A restarted
worker skips ``.done`` files and reads ``.reading`` files again, first (a crash
came in the middle of one): the job's custom_id uniqueness check turns lines
already submitted into ``duplicate`` rejects, so nothing is paid for twice and
nothing is skipped. An operator sees at a glance what was taken.

Producers must make a file appear whole: write it under another name (e.g.
``NAME.jsonl.tmp``, or in another directory on the same file system) and
rename it into place. A file that appears half-written would be read half.

Line numbers run on across files (the job is one long stream of lines), so a
reject's line number is unique in the job; the log says which lines came from
which file (``pipeline.watch`` logger, fields ``file``, ``first_line``,
``last_line``).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from .source import DEFAULT_CHUNK_SIZE, LineReader

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable, Callable

    from anyio.abc import ObjectSendStream

    from ._items import RawLine

__all__ = (
    "DEFAULT_WATCH_INTERVAL",
    "DONE_SUFFIX",
    "READING_SUFFIX",
    "pending_files",
    "watch_source",
)

#: Seconds between two looks at the directory when it has nothing new.
DEFAULT_WATCH_INTERVAL = 1.0
#: What a fully read file is renamed to (its name plus this).
DONE_SUFFIX = ".done"
#: What a file is renamed to while it is being read (its name plus this).
READING_SUFFIX = ".reading"

logger = logging.getLogger("pipeline.watch")


def pending_files(directory: Path, pattern: str) -> list[Path]:
    """The files to take, in order: those claimed but not finished by an earlier
    run (``NAME.reading``), then the new ones matching ``pattern``, oldest first
    (by modification time, then name, so same-second files keep a stable order)."""
    found = []
    for rank, glob in ((0, pattern + READING_SUFFIX), (1, pattern)):
        for path in directory.glob(glob):
            if path.name.endswith(DONE_SUFFIX) or not path.is_file():
                continue
            try:
                found.append((rank, path.stat().st_mtime_ns, path.name, path))
            except FileNotFoundError:  # taken away between glob and stat
                continue
    return [entry[-1] for entry in sorted(found)]


def _watched_directory(directory: str | os.PathLike[str]) -> Path:
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"watched directory {str(root)!r} does not exist")
    return root


def _claim(path: Path) -> Path:
    """Rename ``path`` to ``NAME.reading`` (unless it is one already)."""
    if path.name.endswith(READING_SUFFIX):
        return path
    claimed = path.with_name(path.name + READING_SUFFIX)
    path.rename(claimed)
    return claimed


def _mark_done(path: Path) -> Path:
    """The durable record that every line of ``path`` was sent: ``NAME.done``."""
    name = path.name.removesuffix(READING_SUFFIX) + DONE_SUFFIX
    done = path.with_name(name)
    path.rename(done)
    return done


async def _wait(
    stop_event: anyio.Event,
    seconds: float,
    sleep: Callable[[float], Awaitable[object]] | None,
) -> None:
    if sleep is not None:
        await sleep(seconds)
        return
    with anyio.move_on_after(seconds):
        await stop_event.wait()


async def _send_file(
    send: ObjectSendStream[list[RawLine]],
    path: Path,
    *,
    start_line: int,
    chunk_size: int,
    stop_event: anyio.Event,
) -> int | None:
    """Send every line of ``path``; the last line number sent, or ``None`` if a
    stop came first (the file is then left for the next start)."""
    import aiofiles

    reader = LineReader(start_line=start_line)
    async with aiofiles.open(path, "rb") as handle:
        while True:
            if stop_event.is_set():
                return None
            chunk = await handle.read(chunk_size)
            lines = reader.feed(chunk) if chunk else reader.flush()
            for line in lines:
                line.offset = -1  # offsets are per file: meaningless across files
            if lines:
                await send.send(lines)
            if not chunk:
                return reader.position[1]


async def watch_source(
    send: ObjectSendStream[list[RawLine]],
    /,
    *,
    directory: str | os.PathLike[str],
    pattern: str = "*.jsonl",
    poll_interval: float = DEFAULT_WATCH_INTERVAL,
    stop_event: anyio.Event,
    sleep: Callable[[float], Awaitable[object]] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    start_line: int = 0,
) -> None:
    """Send the lines of every new file in ``directory`` matching ``pattern``,
    looking again every ``poll_interval`` seconds, until ``stop_event`` is set.

    Each file is claimed (``NAME.reading``), read in ``chunk_size`` chunks and
    renamed to ``NAME.done`` once all its lines were sent. ``sleep`` replaces the wait between looks (tests);
    by default the wait ends early when ``stop_event`` is set. Line numbers
    continue from ``start_line``.
    """
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
    root = _watched_directory(directory)
    line = start_line
    async with send:
        while not stop_event.is_set():
            for found in pending_files(root, pattern):
                path = _claim(found)
                last = await _send_file(
                    send, path, start_line=line, chunk_size=chunk_size, stop_event=stop_event
                )
                if last is None:
                    return
                done = _mark_done(path)
                logger.info(
                    "took %s (%d lines)",
                    found.name,
                    last - line,
                    extra={"file": str(done), "first_line": line + 1, "last_line": last},
                )
                line = last
            await _wait(stop_event, poll_interval, sleep)
