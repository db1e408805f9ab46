"""A source that never runs dry: a directory watched for new JSONL files.

For long-lived workers. Producers drop request files (``*.jsonl``, one batch
request entry a line, as for ``pipeline run``) into a directory; the source
picks up each new file once, oldest first, sends its lines like the JSONL file
source (the same ``LineReader``), and records what it took by renaming: a file
is claimed as ``NAME.jsonl.from-N.reading`` (N: the job's line number of its
first line) before its first line is sent, and becomes ``NAME.jsonl.done`` once
every one of its lines is accounted for in the job's ledger (claimed for a batch
or rejected), not merely read: a crash while its last lines wait in the pipeline
loses none of them. A restarted worker skips ``.done`` files and reads the
``.reading`` ones again, first, numbering their lines as the first time, so the
lines the ledger already holds are skipped (not paid twice, not rejected as
duplicates) and the rest go on. An operator sees at a glance what was taken.

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
import re
from pathlib import Path
from typing import TYPE_CHECKING

import anyio

from ._files import opened
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
    "TakenFiles",
    "pending_files",
    "watch_source",
)

#: Seconds between two looks at the directory when it has nothing new.
DEFAULT_WATCH_INTERVAL = 1.0
#: What a fully read file is renamed to (its name plus this).
DONE_SUFFIX = ".done"
#: What a file is renamed to while it is being read: its name, ``.from-N`` (N: the
#: line number of its first line in the job), and this.
READING_SUFFIX = ".reading"
#: ``NAME.from-N.reading``; plain ``NAME.reading`` (no first line known) too
_READING = re.compile(r"^(?P<name>.+?)(?:\.from-(?P<first>\d+))?\.reading$")


def _reading_parts(path: Path) -> tuple[str, int | None]:
    """The original name of a ``.reading`` file and the line its first line had."""
    match = _READING.match(path.name)
    assert match is not None
    first = match.group("first")
    return match.group("name"), int(first) if first is not None else None


logger = logging.getLogger("pipeline.watch")


def pending_files(directory: Path, pattern: str) -> list[Path]:
    """The files to take, in order: those claimed but not accounted for by an
    earlier run (``NAME.from-N.reading``, by N), then the new ones matching
    ``pattern``, oldest first (by modification time, then name, so same-second
    files keep a stable order)."""
    found: dict[Path, tuple[int, int, str]] = {}
    for glob in (pattern + ".from-*" + READING_SUFFIX, pattern + READING_SUFFIX):
        for path in directory.glob(glob):
            if path.is_file() and _READING.match(path.name):
                first = _reading_parts(path)[1]
                found[path] = (0, first if first is not None else -1, path.name)
    for path in directory.glob(pattern):
        if path.name.endswith((DONE_SUFFIX, READING_SUFFIX)) or not path.is_file():
            continue
        try:
            found[path] = (1, path.stat().st_mtime_ns, path.name)
        except FileNotFoundError:  # taken away between glob and stat
            continue
    return sorted(found, key=found.__getitem__)


def _watched_directory(directory: str | os.PathLike[str]) -> Path:
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"watched directory {str(root)!r} does not exist")
    return root


def _claim(path: Path, first: int) -> Path:
    """Rename ``path`` to ``NAME.from-FIRST.reading`` (unless it is one already)."""
    if path.name.endswith(READING_SUFFIX):
        return path
    claimed = path.with_name(f"{path.name}.from-{first}{READING_SUFFIX}")
    path.rename(claimed)
    return claimed


class TakenFiles:
    """Files read but not yet accounted for: each is renamed ``NAME.done`` once
    ``accounted()`` (the last source line the job's ledger holds: claimed or
    rejected) reaches its last line. With no ``accounted``, as soon as it is read."""

    def __init__(self, accounted: Callable[[], int] | None = None) -> None:
        self.accounted = accounted
        self._waiting: list[tuple[Path, int, int]] = []

    def __contains__(self, path: object) -> bool:
        return any(path == waiting[0] for waiting in self._waiting)

    def add(self, path: Path, first: int, last: int) -> None:
        self._waiting.append((path, first, last))
        self.settle()

    def settle(self) -> None:
        """Mark done every waiting file whose lines are all accounted for."""
        reached = self.accounted() if self.accounted is not None else None
        while self._waiting and (reached is None or self._waiting[0][2] <= reached):
            path, first, last = self._waiting.pop(0)
            done = path.with_name(_reading_parts(path)[0] + DONE_SUFFIX)
            try:
                path.rename(done)
            except FileNotFoundError:  # moved away by hand meanwhile: nothing to mark
                logger.warning("%s is gone; not marked done", path.name)
                continue
            logger.info(
                "took %s (%d lines)",
                done.name.removesuffix(DONE_SUFFIX),
                last - first + 1,
                extra={"file": str(done), "first_line": first, "last_line": last},
            )


async def _wait(
    stop: anyio.Event,
    seconds: float,
    sleep: Callable[[float], Awaitable[object]] | None,
) -> None:
    if sleep is not None:
        await sleep(seconds)
        return
    with anyio.move_on_after(seconds):
        await stop.wait()


async def _send_file(
    send: ObjectSendStream[list[RawLine]],
    path: Path,
    *,
    start_line: int,
    chunk_size: int,
    stop: anyio.Event,
    max_line: int | None,
) -> int | None:
    """Send every line of ``path``; the last line number sent, or ``None`` if a
    stop came first (the file is then left for the next start)."""
    reader = LineReader(start_line=start_line, max_line=max_line)
    async with opened(path) as handle:
        while True:
            if stop.is_set():
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
    stop: anyio.Event,
    sleep: Callable[[float], Awaitable[object]] | None = None,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    start_line: int = 0,
    taken: TakenFiles | None = None,
    max_line: int | None = None,
) -> None:
    """Send the lines of every new file in ``directory`` matching ``pattern``,
    looking again every ``poll_interval`` seconds, until ``stop`` is set.

    Each file is claimed (``NAME.from-N.reading``), read in ``chunk_size``
    chunks, and handed to ``taken``, which renames it ``NAME.done`` once its
    lines are accounted for (default: a ``TakenFiles()`` that does so once read).
    ``sleep`` replaces the wait between looks (tests); by default the wait ends
    early when ``stop`` is set. Line numbers continue from ``start_line``;
    a ``.reading`` file left by an earlier run keeps the numbers it had. A line
    longer than ``max_line`` bytes is skipped, not held (``source.LineReader``).
    """
    if poll_interval <= 0:
        raise ValueError(f"poll_interval must be > 0, got {poll_interval}")
    root = _watched_directory(directory)
    taken = taken if taken is not None else TakenFiles()
    line = start_line
    async with send:
        while not stop.is_set():
            for found in pending_files(root, pattern):
                if found in taken:  # read by this run, its lines not all accounted yet
                    continue
                first = _reading_parts(found)[1] if found.name.endswith(READING_SUFFIX) else None
                start = first - 1 if first is not None else line
                path = _claim(found, start + 1)
                last = await _send_file(
                    send,
                    path,
                    start_line=start,
                    chunk_size=chunk_size,
                    stop=stop,
                    max_line=max_line,
                )
                if last is None:
                    return
                taken.add(path, start + 1, last)
                line = max(line, last)
            taken.settle()
            await _wait(stop, poll_interval, sleep)
