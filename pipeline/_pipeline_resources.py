"""What a job opens before its stages run, and checks on the way: the ledger, the
embedded emulator, the output and rejects sinks, and the job's spec (its paths and
a fingerprint of its input, so a state file refuses another input).

A new job refuses to wipe an output or rejects file that holds data unless told
to; a re-run of a finished job only reports its counts. Everything opened goes on
the run's ``AsyncExitStack`` and is closed in reverse order when the run ends; the
ledger's close is shielded, so a cancelled run still closes its state file.

Also here: freezing the heap for the length of a run (see ``_freeze_heap``).

``_JobResources`` is a mixin of ``Pipeline``: it holds no state of its own and
reads the attributes that ``Pipeline.__init__`` sets, declared below for mypy.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import os
import re
import stat
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from ._config import DEFAULT_POLL_INTERVAL, PipelineConfig
from ._errors import UsageError
from .api._client import check_environment
from .api._schema import KNOWN_MODELS
from .ledger._base import JobSpec
from .stages.sink import CallbackSink, JsonlSink, ResultSink, rejects_callback

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AsyncExitStack

    from ._pipeline import Output
    from ._pricing import PriceTable
    from .ledger._base import Ledger, ResumeState
    from .stages._items import RejectLine
    from .stages._protocol import Progress

logger = logging.getLogger("pipeline")

#: The key the embedded emulator is called with (it accepts any key).
EMULATOR_API_KEY = "emulator-local-key"
#: How fast the embedded emulator processes a batch, in seconds.
EMULATOR_BATCH_SECONDS = 0.2
#: Poll floor against the embedded emulator (it ends batches within a second).
EMULATOR_POLL_INTERVAL = 0.1


class _JobResources:
    """The part of ``Pipeline`` that opens and checks what a run works on."""

    config: PipelineConfig
    _output: Output
    _input_path: Path | None
    _output_path: Path | None
    _rejects_path: Path | None
    _rejects_callback: Callable[[RejectLine], Awaitable[object]] | None
    _state_path: Path | None
    _ledger_given: Ledger | None
    _client_given: Any
    _api_key: str | None
    _base_url: str | None
    _emulator_dir: str | os.PathLike[str] | None
    _prices: PriceTable | None
    _announce: Callable[[str], None]
    _overwrite: bool
    _progress: Progress
    _finished: bool
    _canceled: bool
    _cancel_only: bool
    _stopped_reason: str | None

    def _check_paths(self) -> None:
        """The files a job writes are neither its input nor one another (``--overwrite``
        on an output that is the input would wipe the requests before reading them)."""
        seen: list[tuple[str, Path, str]] = []
        for what, path in (
            ("input", self._input_path),
            ("output", self._output_path),
            ("rejects", self._rejects_path),
            ("state", self._state_path),
        ):
            if path is None:
                continue
            real = os.path.realpath(path)
            for other, other_path, other_real in seen:
                if real == other_real or _same_file(path, other_path):
                    raise UsageError(
                        f"the {what} file {path} is the {other} file ({other_path}): "
                        f"give the {what} a file of its own"
                    )
            seen.append((what, path, real))

    def _check_before_start(self) -> None:
        """What can be refused before anything is opened (the command line calls it
        before it shows any progress; the run calls it again)."""
        if self._client_given is None:  # the key, token and URL the run would take
            check_environment(
                self.config.api_key_env, api_key=self._api_key, base_url=self._base_url
            )
        self._check_files()
        state = self._state_path
        if self._ledger_given is None and state is not None and not state.exists():
            self._check_overwrite()  # a new job: a re-run checks again once the state is open

    def _check_files(self) -> None:
        """The input is a file that can be read again (to resume), and the files a
        job writes go into directories that exist. At run time: a service may make
        them after building the pipeline; the command line checks before it shows
        any progress."""
        if self._input_path is not None:
            _check_input(self._input_path)
        for what, path in (
            ("output", self._output_path),
            ("rejects", self._rejects_path),
            ("state", self._state_path),
        ):
            if path is not None and not path.parent.is_dir():
                raise UsageError(
                    f"the {what} file {path} cannot be written: its directory "
                    f"{path.parent} does not exist"
                )

    def _check_overwrite(self) -> None:
        """A new job starts its output and rejects files empty: refuse to wipe one
        that holds data, unless told to."""
        if self._overwrite:
            return
        for what, path in (("output", self._output_path), ("rejects", self._rejects_path)):
            if path is not None and path.is_file() and path.stat().st_size > 0:
                raise UsageError(
                    f"{what} file {path} is not empty and this is a new job (no state in "
                    f"{self._state_path or 'the ledger'}): pass --overwrite (Python: "
                    "overwrite=True) to replace it, or remove it"
                )

    async def _already_finished(self, ledger: Ledger, resume: ResumeState) -> None:
        """A re-run of a finished job: its files checked against the ledger (one cut
        short is an error), its counts from the ledger, and a warning."""
        for path, position in (
            (self._output_path, resume.output),
            (self._rejects_path, resume.rejects),
        ):
            if path is not None:
                await JsonlSink(path).check(position)
        status = await ledger.status()
        p = self._progress
        p.read, p.rejected, p.submitted = status.read, status.rejected, status.submitted
        p.ended, p.written = status.ended, status.written
        p.estimated_cost_usd = status.estimated_cost_usd
        p.source_done = True
        self._finished = True
        if self._cancel_only:
            logger.warning("this job already finished; nothing to cancel")
            return
        logger.warning(
            "this job already finished; nothing to do (state %s). Remove the state file "
            "to run it again (with --overwrite / overwrite=True to replace its output).",
            self._state_path or "in the ledger",
        )

    async def _already_canceled(self, ledger: Ledger) -> None:
        """A re-run of a canceled job: its counts from the ledger, and why it stops."""
        status = await ledger.status()
        p = self._progress
        p.read, p.rejected, p.submitted = status.read, status.rejected, status.submitted
        p.ended, p.written, p.spooled = status.ended, status.written, status.spooled
        if status.canceled:
            p.outcome("canceled", status.canceled)
        self._canceled = True
        self._stopped_reason = (
            f"this job was canceled: {status.canceled:,} request(s) canceled, "
            f"{status.spooled:,} waiting to be re-sent, input read to line {status.read:,}; "
            "nothing was sent. Re-run with --resume-canceled (Python: resume_canceled=True) "
            "to send them and go on"
        )
        logger.warning("%s", self._stopped_reason)

    async def _start_emulator(self, stack: AsyncExitStack) -> str:
        from .emulator import EmulatorConfig
        from .testing import serve_emulator

        data_dir = Path(self._emulator_dir) if self._emulator_dir is not None else None
        if data_dir is None and self._state_path is not None:
            data_dir = self._state_path.with_name(self._state_path.name + ".emulator")
        # the models the service is known to accept, and any this job names or prices
        # itself (a model newer than this package, given with --models or --price)
        models = KNOWN_MODELS | frozenset(self._prices or ()) | (self.config.models or set())
        emu_config = EmulatorConfig(
            batch_seconds=EMULATOR_BATCH_SECONDS,
            models=models,
            allow_fields=self.config.allow_fields,
        )
        handle = await stack.enter_async_context(serve_emulator(emu_config, data_dir=data_dir))
        if self.config.poll_interval == DEFAULT_POLL_INTERVAL:
            self.config = _with(self.config, poll_interval=EMULATOR_POLL_INTERVAL)
        self._announce(
            f"pipeline: no API key and no base URL: running on the local emulator at {handle.url} "
            f"(set {self.config.api_key_env} to use the Message Batches API)"
        )
        return handle.url

    async def _open_ledger(self, stack: AsyncExitStack) -> Ledger:
        if self._ledger_given is not None:
            ledger = self._ledger_given
        else:
            from .ledger._sqlite import SQLiteLedger

            assert self._state_path is not None
            ledger = SQLiteLedger(self._state_path)
        stack.push_async_callback(_shielded(ledger.aclose))
        return ledger

    def _output_sink(self) -> ResultSink:
        output = self._output
        if isinstance(output, str | os.PathLike):
            return JsonlSink(output)
        if hasattr(output, "commit") and hasattr(output, "write"):
            return output  # type: ignore[return-value]
        return CallbackSink(output)  # type: ignore[arg-type]

    def _job_spec(self) -> JobSpec:
        fingerprint = None
        if self._input_path is not None:
            fingerprint = _fingerprint(self._input_path)
        return JobSpec(
            input_path=str(self._input_path.absolute()) if self._input_path else None,
            input_fingerprint=fingerprint,
            output_path=str(self._output_path.absolute()) if self._output_path else None,
            rejects_path=str(self._rejects_path.absolute()) if self._rejects_path else None,
        )

    async def _open_sinks(
        self, stack: AsyncExitStack, resume: ResumeState
    ) -> tuple[ResultSink, ResultSink | None]:
        """The output sink and the rejects sink (if any), each truncated back to
        its last commit."""
        sink = self._output_sink()
        await sink.open(resume.output)
        stack.push_async_callback(sink.aclose)
        rejects_sink: ResultSink | None = None
        if self._rejects_path is not None:
            rejects_sink = JsonlSink(self._rejects_path)
        elif self._rejects_callback is not None:
            rejects_sink = rejects_callback(self._rejects_callback)
        if rejects_sink is not None:
            await rejects_sink.open(resume.rejects)
            stack.push_async_callback(rejects_sink.aclose)
        return sink, rejects_sink


def _check_input(path: Path) -> None:
    """A missing input, a directory, a pipe, or a file that is not UTF-8 text (by its
    first bytes: compressed, an archive, UTF-16 or 32) is a usage error, said before the
    job opens anything: a job reads its lines again by offset to resume and to retry,
    and any of these would be read as lines of garbage, each one a reject."""
    if str(path) == "-":
        raise UsageError(
            "reading requests from standard input ('-') is not supported: a job reads "
            "its input again to resume after a crash; save the requests to a file first"
        )
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"the input file {path} does not exist") from None
    except OSError:
        return  # unreadable for another reason: the open says why (InputError)
    if stat.S_ISDIR(mode):
        raise UsageError(
            f"the input {path} is a directory: give a JSONL file (a worker with "
            "WatchPipeline takes each new file of a directory)"
        )
    if not stat.S_ISREG(mode):
        raise UsageError(
            f"the input {path} is not a regular file: a pipe or device cannot be read "
            "again to resume after a crash; save the requests to a file first"
        )
    try:
        with open(path, "rb") as handle:
            head = handle.read(10)
    except OSError:
        return  # the open in the run says why (InputError)
    for magic, kind, advice in _NOT_JSONL:
        if magic.match(head):
            raise UsageError(f"the input {path} is {kind}, not JSONL: {advice}")


_DECOMPRESS = (
    "decompress it first (a job reads its lines again by their offset in the file to "
    "resume and to retry)"
)
_RESAVE = "save it as UTF-8 (JSON lines are UTF-8)"
#: the first bytes of files that are not UTF-8 text (compressed, archives, UTF-16 or 32
#: with a byte order mark): each would be read as lines of garbage, rejected one by one
_NOT_JSONL = tuple(
    (re.compile(magic), kind, advice)
    for magic, kind, advice in (
        (rb"\x1f\x8b", "gzip-compressed", _DECOMPRESS),
        (rb"\x28\xb5\x2f\xfd", "zstd-compressed", _DECOMPRESS),
        (rb"BZh[1-9]1AY&SY", "bzip2-compressed", _DECOMPRESS),  # a text line may start "BZh"
        (rb"\xfd7zXZ\x00", "xz-compressed", _DECOMPRESS),
        (rb"PK\x03\x04", "a zip archive", _DECOMPRESS),
        (rb"\xff\xfe\x00\x00|\x00\x00\xfe\xff", "UTF-32 text", _RESAVE),  # before UTF-16 LE
        (rb"\xff\xfe|\xfe\xff", "UTF-16 text", _RESAVE),
    )
)


#: Bytes per read while the input is hashed.
_HASH_READ = 1 << 20


def _fingerprint(path: Path) -> str:
    """The input's size and the SHA-256 of all its bytes: a state file refuses another
    input, and this one once any byte of it changed. Read in 1 MiB blocks, in a worker
    thread (the run awaits it): about 1 s per GB on a loaded 2-core machine, at every
    start, which a job that size spends many times over on its own reading."""
    digest = hashlib.sha256()
    block = bytearray(_HASH_READ)
    view = memoryview(block)
    try:
        with open(path, "rb") as handle:
            while count := handle.readinto(block):
                digest.update(view[:count])
            size = handle.tell()
    except OSError as exc:
        from ._errors import InputError

        raise InputError(f"cannot read input {str(path)!r}: {exc.strerror}") from exc
    return f"{size}:sha256:{digest.hexdigest()}"


def _with(config: PipelineConfig, **changes: Any) -> PipelineConfig:
    import msgspec

    return msgspec.structs.replace(config, **changes)


def _shielded(fn: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
    async def close() -> None:
        with anyio.CancelScope(shield=True), anyio.move_on_after(10):
            await fn()

    return close


#: Pipelines running in this process; the first one freezes the heap, the last
#: one to end thaws it.
_running = 0


def _freeze_heap() -> None:
    """Move every object alive at start-up out of the cyclic GC's reach, so the
    collections of a long run do not walk the imported modules again and again.
    Garbage is collected first, so none is frozen."""
    global _running
    _running += 1
    if _running == 1:
        gc.collect()
        gc.freeze()


def _thaw_heap() -> None:
    global _running
    _running -= 1
    if _running == 0:
        gc.unfreeze()


def _same_file(a: Path, b: Path) -> bool:
    """Whether two existing paths are one file (a hard link, say)."""
    try:
        return os.path.samefile(a, b)
    except OSError:
        return False
