"""Run a Python pipeline definition as a long-lived worker.

A definition is a plain Python file that builds a ``Pipeline``; it names it in
one of two ways (the first found wins):

* a module-level variable ``pipeline`` holding the ``Pipeline``;
* a function ``make_pipeline()`` (sync or ``async``) returning one, for
  definitions that must not build anything at import time.

The same file serves a service: import it and ``await pipeline.run()``.

``python -m pipeline worker definition.py`` (``pipeline.cli.worker``) loads the
file (it is executed under the name ``__pipeline_worker__``, so its
``if __name__ == "__main__":`` block does not run) and runs the pipeline with progress, the ``pipeline`` log
handler and signal handling: the first SIGTERM or SIGINT asks the pipeline to
stop (``pipeline.stop()``: stop reading, send or spool what is in hand, flush,
commit) and the worker exits 0 once it has; a second signal cancels the run at
once (the state on disk stays consistent) and the worker exits 128 + signal.
"""

from __future__ import annotations

import inspect
import logging
import runpy
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from ._errors import UsageError
from ._logging import announce
from ._pipeline import Pipeline
from .stages.source import entry_line
from .stages.watch import DEFAULT_WATCH_INTERVAL, TakenFiles, watch_source

if TYPE_CHECKING:
    import os
    from contextlib import AsyncExitStack

    from anyio.abc import ObjectSendStream
    from anyio.streams.memory import MemoryObjectReceiveStream

    from ._stats import PipelineStatistics
    from .stages._items import RawLine

__all__ = (
    "QueuePipeline",
    "StoppablePipeline",
    "WatchPipeline",
    "queue_source",
    "load_definition",
    "resolve_pipeline",
)

logger = logging.getLogger("pipeline.worker")

#: The name a definition file runs under (not ``__main__``).
DEFINITION_MODULE_NAME = "__pipeline_worker__"


class StoppablePipeline(Protocol):
    """What the worker needs of a pipeline: run it, watch it, stop it."""

    async def run(self) -> object:
        """Run until the job ends or ``stop()`` was called."""
        ...

    def statistics(self) -> PipelineStatistics:
        """A snapshot of the job's progress."""
        ...

    def stop(self, reason: str = ...) -> None:
        """Stop reading input, finish or spool what is in hand, and end ``run()``."""
        ...


class WatchPipeline(Pipeline):
    """A ``Pipeline`` whose source is a directory watched for new JSONL files
    (``pipeline.stages.watch``): it never runs dry, so it runs until ``stop()``.

    Each file dropped into ``directory`` (matching ``pattern``; write it under
    another name and rename it in, so it appears whole) is read once and renamed
    to ``NAME.done``; its lines travel like those of ``pipeline run``'s input.
    Every other argument is the ``Pipeline``'s (``state=`` is required when
    ``output`` is not a file). A lingering partial batch is sent after
    ``config.linger_seconds``, so a trickle of small files still flows.
    Notices (e.g. "running on the local emulator") go to the ``pipeline`` logger.
    The job is never marked finished: a restart with the same state goes on.
    """

    open_ended = True

    def __init__(
        self,
        directory: str | os.PathLike[str],
        output: Any,
        rejects: str | os.PathLike[str] | None = None,
        *,
        pattern: str = "*.jsonl",
        poll_interval: float = DEFAULT_WATCH_INTERVAL,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("announce", announce)
        self.directory = Path(directory)
        self.pattern = pattern
        self.poll_interval = poll_interval
        super().__init__(self._watch, output, rejects, **kwargs)
        #: files read, renamed ``.done`` once the ledger accounts for their lines
        self._taken = TakenFiles(accounted=lambda: self._progress.accounted_line)

    def __repr__(self) -> str:
        return f"WatchPipeline(directory={str(self.directory)!r}, output={self._output!r})"

    async def _watch(
        self, send: ObjectSendStream[list[RawLine]], /, *, stop: anyio.Event, start_line: int
    ) -> None:
        """The source stage (``SourceStage``): the watched directory's lines."""
        await watch_source(
            send,
            directory=self.directory,
            pattern=self.pattern,
            poll_interval=self.poll_interval,
            stop=stop,
            start_line=start_line,
            taken=self._taken,
            max_line=self.config.max_batch_bytes,
        )

    async def _run(self, stack: AsyncExitStack) -> None:
        # the last files' lines are claimed after the source stopped: settle them
        # once the job is over (the stack unwinds after the last claim)
        stack.callback(self._taken.settle)
        await super()._run(stack)


#: How often a queue source waiting for items looks at the stop flag, in seconds.
_QUEUE_STOP_CHECK = 0.2


async def queue_source(
    send: Any,
    /,
    *,
    receive: MemoryObjectReceiveStream[Any],
    stop: anyio.Event,
    start_line: int = 0,
) -> None:
    """Send entries (dicts, Structs or encoded bytes) as they arrive on ``receive``:
    whatever is waiting goes out at once as one chunk, so a trickle is never held
    back. Ends when ``receive`` is closed by its producers or ``stop`` is set."""
    line = start_line
    async with send:
        while not stop.is_set():
            items: list[Any] = []
            with anyio.move_on_after(_QUEUE_STOP_CHECK):
                try:
                    items.append(await receive.receive())
                except anyio.EndOfStream:
                    return
            if not items:
                continue
            while True:
                try:
                    items.append(receive.receive_nowait())
                except (anyio.WouldBlock, anyio.EndOfStream):
                    break
            chunk = []
            for item in items:
                line += 1
                chunk.append(entry_line(line, item))  # unencodable: a reject, not a crash
            await send.send(chunk)


class QueuePipeline(Pipeline):
    """A ``Pipeline`` fed from a memory object stream, for services: producers
    ``await send.send(entry)``; each entry goes on as soon as it arrives (a
    partial batch is sent after ``config.linger_seconds``). It ends when every
    producer closed its send end (or on ``stop()``), but the job is never marked
    finished: a service restarted with the same state (and a new queue) goes on
    numbering and sending. ``state=`` is required when ``output`` is not a file;
    ``rejects=`` may be an async callback called with each reject (a
    ``RejectLine``). Entries are at-least-once across a crash of the service: keep
    the queue's producers idempotent by custom_id."""

    open_ended = True

    def __init__(self, receive: MemoryObjectReceiveStream[Any], output: Any, **kwargs: Any) -> None:
        kwargs.setdefault("announce", announce)
        self.receive = receive
        super().__init__(self._from_queue, output, **kwargs)

    def __repr__(self) -> str:
        return f"QueuePipeline(output={self._output!r})"

    async def _from_queue(
        self, send: ObjectSendStream[list[RawLine]], /, *, stop: anyio.Event, start_line: int
    ) -> None:
        """The source stage (``SourceStage``): entries as they arrive on the queue."""
        async with self.receive:
            await queue_source(send, receive=self.receive, stop=stop, start_line=start_line)


def load_definition(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Execute the definition file at ``path``; its module namespace. An error in it
    is a ``UsageError`` carrying the traceback of the user's code only."""
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"pipeline definition {str(file)!r} is not a file")
    try:
        return runpy.run_path(str(file), run_name=DEFINITION_MODULE_NAME)
    except Exception as exc:
        raise _definition_error(file, "loading it", exc) from exc


def _definition_error(file: Path, doing: str, exc: Exception) -> UsageError:
    """What the user's definition raised, with the traceback from its first frame in
    the definition on (the worker's own frames above it say nothing to them)."""
    tb = exc.__traceback__
    while tb is not None and Path(tb.tb_frame.f_code.co_filename) != file:
        tb = tb.tb_next
    lines = traceback.format_exception(type(exc), exc, tb if tb is not None else exc.__traceback__)
    return UsageError(f"the definition {file} failed while {doing}:\n{''.join(lines).rstrip()}")


async def resolve_pipeline(namespace: dict[str, Any], *, path: str = "") -> StoppablePipeline:
    """The pipeline a definition's namespace names: ``pipeline``, else the result
    of ``make_pipeline()`` (awaited if it is a coroutine function)."""
    where = f" in {path}" if path else ""
    if namespace.get("pipeline") is not None:
        candidate = namespace["pipeline"]
    elif callable(namespace.get("make_pipeline")):
        try:
            candidate = namespace["make_pipeline"]()
            if inspect.isawaitable(candidate):
                candidate = await candidate
        except Exception as exc:
            raise _definition_error(Path(path), "calling make_pipeline()", exc) from exc
    else:
        raise UsageError(
            f"no pipeline{where}: define a module-level `pipeline = Pipeline(...)` "
            "or a function `make_pipeline()` that returns one"
        )
    missing = [
        m for m in ("run", "statistics", "stop") if not callable(getattr(candidate, m, None))
    ]
    if missing:
        raise UsageError(
            f"the pipeline{where} is a {type(candidate).__name__}, not a Pipeline "
            f"(it has no {', '.join(missing)})"
        )
    pipeline: StoppablePipeline = candidate
    return pipeline
