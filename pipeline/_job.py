"""The job's files and what a run opens: ``JobFiles`` (the paths a job reads and
writes, their checks, the fingerprint of the input, the ``JobSpec``) and
``JobResources`` (the ledger, the client, the embedded emulator, the output and
rejects sinks, opened on the run's ``AsyncExitStack`` and closed in reverse order
when the run ends; the ledger's close is shielded, so a cancelled run still closes
its state file).

A new job refuses to wipe an output or rejects file that holds data unless told
to. Both are built with explicit arguments by ``Pipeline``; neither knows it.

Also here: freezing the heap for the length of a run (see ``_freeze_heap``).
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
import msgspec

from ._config import (
    AUTH_TOKEN_ENV,
    BASE_URL_ENV,
    DEFAULT_POLL_INTERVAL,
    PipelineConfig,
)
from ._errors import UsageError
from .api._client import Client, check_environment
from .api._schema import KNOWN_MODELS
from .ledger._base import JobSpec
from .stages.sink import CallbackSink, JsonlSink, ResultSink, rejects_callback

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable
    from contextlib import AsyncExitStack

    from ._pricing import PriceTable
    from .ledger._base import Ledger, ResumeState
    from .stages._items import RejectLine

__all__ = ("JobFiles", "JobResources")

logger = logging.getLogger("pipeline")

#: The key the embedded emulator is called with (it accepts any key).
EMULATOR_API_KEY = "emulator-local-key"
#: How fast the embedded emulator processes a batch, in seconds.
EMULATOR_BATCH_SECONDS = 0.2
#: Poll floor against the embedded emulator (it ends batches within a second).
EMULATOR_POLL_INTERVAL = 0.1


class JobFiles:
    """The files of one job: ``input`` (None for other sources), ``output`` and
    ``rejects`` (None when they are callbacks), ``state`` (None with a given
    ledger). Checks them and makes the job's ``JobSpec``."""

    def __init__(
        self,
        *,
        input: Path | None,
        output: Path | None,
        rejects: Path | None,
        state: Path | None,
        ledger_given: bool,
        overwrite: bool,
    ) -> None:
        self.input = input
        self.output = output
        self.rejects = rejects
        self.state = state
        self.ledger_given = ledger_given
        self.overwrite = overwrite
        self.check_paths()

    def check_paths(self) -> None:
        """The files a job writes are neither its input nor one another (``--overwrite``
        on an output that is the input would wipe the requests before reading them)."""
        seen: list[tuple[str, Path, str]] = []
        for what, path in (
            ("input", self.input),
            ("output", self.output),
            ("rejects", self.rejects),
            ("state", self.state),
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

    def check_before_start(self) -> None:
        """What can be refused before anything is opened (the command line calls it
        before it shows any progress; the run calls it again)."""
        self.check_files()
        state = self.state
        if not self.ledger_given and state is not None and not state.exists():
            self.check_overwrite()  # a new job: a re-run checks again once the state is open

    def check_files(self) -> None:
        """The input is a file that can be read again (to resume), and the files a
        job writes go into directories that exist. At run time: a service may make
        them after building the pipeline; the command line checks before it shows
        any progress."""
        if self.input is not None:
            _check_input(self.input)
        for what, path in (
            ("output", self.output),
            ("rejects", self.rejects),
            ("state", self.state),
        ):
            if path is not None and not path.parent.is_dir():
                raise UsageError(
                    f"the {what} file {path} cannot be written: its directory "
                    f"{path.parent} does not exist"
                )

    def check_overwrite(self) -> None:
        """A new job starts its output and rejects files empty: refuse to wipe one
        that holds data, unless told to."""
        if self.overwrite:
            return
        for what, path in (("output", self.output), ("rejects", self.rejects)):
            if path is not None and path.is_file() and path.stat().st_size > 0:
                raise UsageError(
                    f"{what} file {path} is not empty and this is a new job (no state in "
                    f"{self.state or 'the ledger'}): pass --overwrite (Python: "
                    "overwrite=True) to replace it, or remove it"
                )

    def spec(self) -> JobSpec:
        """What identifies the job (a state file refuses another input)."""
        fingerprint = None
        if self.input is not None:
            fingerprint = _fingerprint(self.input)
        return JobSpec(
            input_path=str(self.input.absolute()) if self.input else None,
            input_fingerprint=fingerprint,
            output_path=str(self.output.absolute()) if self.output else None,
            rejects_path=str(self.rejects.absolute()) if self.rejects else None,
        )


class JobResources:
    """What a run opens, each on the run's ``stack``: ``ledger``, ``client``,
    ``sink`` and ``rejects_sink``. Built per run with explicit arguments:

    **Parameters:**

    * **files** - the job's ``JobFiles``.
    * **config** - the job's configuration; ``config`` after ``open_client`` is the
      one to run with (the embedded emulator polls faster).
    * **ledger** / **client** - given ones, used as they are.
    * **api_key** / **base_url** - the service (see ``Pipeline``).
    * **emulator_dir** - where the embedded emulator keeps its data.
    * **announce** - where notices go.
    * **prices** - the job's price table, if not the default.
    * **output** - the job's output (a path, a callback or a ``ResultSink``).
    * **rejects_callback** - an async callback for rejects, if any.
    """

    def __init__(
        self,
        *,
        files: JobFiles,
        config: PipelineConfig,
        ledger: Ledger | None,
        client: Client | None,
        api_key: str | None,
        base_url: str | None,
        default_base_url: str,
        emulator_dir: str | os.PathLike[str] | None,
        announce: Callable[[str], None],
        prices: PriceTable | None,
        output: Any,
        rejects_callback: Callable[[RejectLine], Awaitable[object]] | None,
    ) -> None:
        self.files = files
        self.config = config
        self._ledger_given = ledger
        self._client_given = client
        self._api_key = api_key
        self._base_url = base_url
        self._default_base_url = default_base_url
        self._emulator_dir = emulator_dir
        self._announce = announce
        self._prices = prices
        self._output = output
        self._rejects_callback = rejects_callback
        self.client: Client | None = None

    def check_service(self) -> None:
        """The key, token and URL the run would take can work (unless a client is
        given): refused before anything is opened."""
        if self._client_given is None:
            check_environment(
                self.config.api_key_env, api_key=self._api_key, base_url=self._base_url
            )

    async def open_ledger(self, stack: AsyncExitStack) -> Ledger:
        if self._ledger_given is not None:
            ledger = self._ledger_given
        else:
            from .ledger._sqlite import SQLiteLedger

            assert self.files.state is not None
            ledger = SQLiteLedger(self.files.state)
        stack.push_async_callback(_shielded(ledger.aclose))
        return ledger

    async def open_client(self, stack: AsyncExitStack) -> Client:
        if self._client_given is not None:
            self.client = self._client_given
            return self.client
        api_key, base_url, token = self._api_key, self._base_url, None
        if api_key is None:  # as the command line does: the key from the environment
            api_key = os.environ.get(self.config.api_key_env) or None
        if api_key is None:  # as the SDK does: a bearer token instead (some gateways)
            token = os.environ.get(AUTH_TOKEN_ENV) or None
        if base_url is None:  # as the SDK does: a gateway named in the environment
            base_url = os.environ.get(BASE_URL_ENV) or None
        if api_key is None and token is None and base_url is None:
            base_url = await self._start_emulator(stack)
            api_key = EMULATOR_API_KEY
        client = Client(
            api_key=api_key, auth_token=token, base_url=base_url or self._default_base_url
        )
        self.client = await stack.enter_async_context(client)
        return self.client

    async def _start_emulator(self, stack: AsyncExitStack) -> str:
        from .emulator import EmulatorConfig
        from .testing import serve_emulator

        state = self.files.state
        data_dir = Path(self._emulator_dir) if self._emulator_dir is not None else None
        if data_dir is None and state is not None:
            data_dir = state.with_name(state.name + ".emulator")
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

    def _output_sink(self, *, outputs: bool) -> ResultSink:
        output = self._output
        if isinstance(output, str | os.PathLike):
            return JsonlSink(output)
        if hasattr(output, "commit") and hasattr(output, "write"):
            return output  # type: ignore[no-any-return]
        if outputs:  # a result processor's outputs: the callback gets them as JSON values
            return CallbackSink(output, decoder=msgspec.json.Decoder())
        return CallbackSink(output)

    async def open_sinks(
        self,
        stack: AsyncExitStack,
        resume: ResumeState,
        *,
        wrap: Callable[[ResultSink], ResultSink] | None = None,
    ) -> tuple[ResultSink, ResultSink | None]:
        """The output sink (through ``wrap``: a result processor) and the rejects
        sink (if any), each truncated back to its last commit."""
        sink = self._output_sink(outputs=wrap is not None)
        if wrap is not None:
            sink = wrap(sink)
        await sink.open(resume.output)
        stack.push_async_callback(sink.aclose)
        rejects_sink: ResultSink | None = None
        if self.files.rejects is not None:
            rejects_sink = JsonlSink(self.files.rejects)
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
