"""Submitter: turns chunks into batches at the service, following the ledger's
protocol (``pipeline/ledger/_base.py``) so that a crash at any point never pays for
a batch twice.

Per chunk: ``claim`` (duplicates come back and are dropped from the body: they are
rejects now), wait for capacity (the cap of requests in flight: this is where
backpressure starts), ``record_sending``, POST the spliced body, ``record_created``,
and hand the batch to the poller. A 413 re-splits the batch in halves; another
definitive 4xx rejects its requests with the service's message; an unknown outcome
is reconciled, never re-sent blindly; 401/403 fail the job. A create the service
refused for now (429, 5xx, 408/409, no connection), still refused after the
client's own retries, certainly made no batch: the submitter backs off
(exponentially, capped at ``max_create_backoff``) and tries again, so a
long-lived worker rides out an outage; a graceful stop during the wait spools the
requests for the next start. Once the job is being canceled (``canceling`` set),
nothing more is created: a claimed chunk is released to the spool instead.

Claims and creates overlap: the next chunk is claimed while the last one's create
is under way (claims stay in input order, so the ledger's checkpoint follows them;
one create at a time). A claim of 10,000 random ids takes tens of milliseconds in
the ledger's thread; off the create's path, it no longer delays the next batch
(1M random ids: 0.83x the wall time). Memory: the submitter then holds two chunks,
the one being created and the one claimed next, and lets go of each as soon as its
create is recorded. With ``PipelineConfig.low_memory`` it holds one chunk at a time
(before it asks for the next: under a ``ChunkHandoff`` the chunker packs the next
only then), claim and create one after the other. The body is never joined whole: a
``SplicedBody`` of the entries' bytes goes out a MiB at a time (a 100,000-request
body of 65 MB costs a MiB or two on top of the entries, not a second copy and the
HTTP stack's). Given the job's ``input_path``, entries that came without their
bytes (the chunker's ``drop_file_bytes``, the retry feeder's rounds) are read back
from the file as the body is sent (``InputBody``): one read per run of adjacent
lines, a MiB at a time.
"""

from __future__ import annotations

import logging
import time
from operator import attrgetter
from typing import TYPE_CHECKING, BinaryIO
from zlib import crc32

import anyio

from .._errors import (
    TRANSIENT_ERRORS,
    APIConnectionError,
    APIStatusError,
    AuthenticationError,
    CreateOutcomeUnknownError,
    PermissionDeniedError,
    RequestTooLargeError,
)
from ..api._body import BODY_HEAD, BODY_TAIL, PIECE_BYTES, SplicedBody
from ._items import SubmittedBatch

if TYPE_CHECKING:
    import os
    from collections.abc import Awaitable, Callable, Iterator, Sequence
    from typing import Self

    from anyio.abc import ObjectReceiveStream, ObjectSendStream

    from .._config import PipelineConfig
    from ..api._client import Client
    from ..ledger._base import Ledger, SpoolItem
    from ._items import Entry
    from ._protocol import Capacity, Chunk, JobCounters

__all__ = (
    "FIRST_CREATE_BACKOFF",
    "InputBody",
    "InputChangedError",
    "Submitter",
    "create_backoff",
    "submitter",
)

logger = logging.getLogger("pipeline.submitter")
_raw = attrgetter("raw")
_crc32 = attrgetter("crc32")

#: The first wait before a create refused for now is tried again, in seconds (the
#: client has already retried it a few times over a few seconds).
FIRST_CREATE_BACKOFF = 2.0
#: Statuses of a definitive answer that still means "try later" (no batch was made).
_TRY_LATER_STATUSES = frozenset({408, 409, 429})


def create_backoff(tries: int, *, ceiling: float) -> float:
    """Seconds to wait after the ``tries``-th refused create (1-based): doubling from
    ``FIRST_CREATE_BACKOFF``, capped at ``ceiling``."""
    return min(ceiling, FIRST_CREATE_BACKOFF * 2.0 ** min(tries - 1, 30))


def _try_later(exc: Exception) -> bool:
    """Whether a failed create certainly made no batch and may simply be tried again."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, APIStatusError) and (
        exc.status_code >= 500 or exc.status_code in _TRY_LATER_STATUSES
    )


class InputChangedError(RuntimeError):
    """The input file no longer holds, where a request was read, the bytes it had:
    it was changed while the job ran. Nothing of that request is sent (a body being
    sent is cut short, so the service makes no batch of it)."""

    @classmethod
    def at(cls, path: object, entry: Entry | SpoolItem, found: str, outcome: str) -> Self:
        """The error for ``entry``'s line of the input ``path``: what was ``found``
        where it was read, and what became of it (``outcome``)."""
        return cls(
            f"the input {path} changed while the job ran: line {entry.line} (custom_id "
            f"{entry.custom_id!r}) {found}; {outcome}: restore the input and run the job "
            "again (or start a new job)"
        )


class InputBody(SplicedBody):
    """The create body of ``entries``, the bytes of those that came without them
    (``raw`` empty: the chunker's ``drop_file_bytes``) read back from the input file
    ``path`` as it is sent. An entry without bytes is the file's line from its
    ``offset`` to its ``\\n`` at ``end - 1``; adjacent lines are read together (up to
    about ``PIECE_BYTES``) and their ``\\n`` become the body's ``,``. Each line read
    is checked: where it was read, with the CRC-32 its bytes had then
    (``Entry.crc32``); else ``InputChangedError``, before the body's end. The reads
    are made as httpx asks for the next piece, on the event loop, a MiB at a time:
    the lines were read moments before (the chunk was just packed), so they come
    from the page cache."""

    __slots__ = ("_entries", "_path", "_piece_bytes")

    def __init__(
        self,
        entries: Sequence[Entry],
        path: str | os.PathLike[str],
        piece_bytes: int = PIECE_BYTES,
    ) -> None:
        self._entries = entries
        self._path = path
        self._piece_bytes = piece_bytes
        #: the body's exact size, as ``SplicedBody.size``
        self.size = (
            len(BODY_HEAD)
            + len(BODY_TAIL)
            + sum([len(e.raw) or e.end - e.offset - 1 for e in entries])
            + max(len(entries) - 1, 0)
        )

    def __repr__(self) -> str:
        return f"InputBody({len(self._entries)} requests, {self.size} bytes)"

    def pieces(self) -> Iterator[bytes]:
        """The body in order, as ``SplicedBody.pieces``: runs of lines gathered into
        pieces of about ``piece_bytes`` (a reject or a blank line between two lines
        ends a run; each piece is one write to the connection, not one per run or
        per line kept in memory)."""
        piece_bytes = self._piece_bytes
        yield BODY_HEAD
        gathered: list[bytes] = []
        size = 0
        sep = b""
        for segment in self._segments(piece_bytes):
            gathered.append(segment)
            size += len(segment)
            if size >= piece_bytes:
                if sep:
                    yield sep
                yield b",".join(gathered)
                gathered, size, sep = [], 0, b","
        if gathered:
            if sep:
                yield sep
            yield b",".join(gathered)
        yield BODY_TAIL

    def _segments(self, piece_bytes: int) -> Iterator[bytes]:
        """The lines in order: the bytes of an entry that kept them, or a read of a
        run of adjacent lines (up to about ``piece_bytes``) joined by ``,``."""
        entries = self._entries
        with open(self._path, "rb") as file:
            start = stop = 0  # the run of lines to read: [start, stop)
            first = -1  # the run's first entry (-1: no run)
            for i, e in enumerate(entries):
                if first >= 0 and (e.raw or e.offset != stop + 1 or stop - start >= piece_bytes):
                    yield _read_lines(file, start, stop, entries[first:i], self._path)
                    first = -1
                if e.raw:
                    yield e.raw
                    continue
                if first < 0:
                    start, first = e.offset, i
                stop = e.end - 1
            if first >= 0:
                yield _read_lines(file, start, stop, entries[first:], self._path)


def _read_lines(file: BinaryIO, start: int, stop: int, run: Sequence[Entry], path: object) -> bytes:
    """The adjacent lines of ``run`` (entries without their bytes), the file's bytes
    ``[start, stop)``, joined by ``,``; each line checked against the entry's
    CRC-32 (``Entry.crc32``), so that no byte of a line changed since it was
    validated is sent."""
    file.seek(start)
    data = file.read(stop - start)
    changed = run[0]  # lines gone or added: the run's first stands for it
    if len(data) == stop - start and data.count(b"\n") == len(run) - 1:
        # each line where it was read (no copy of it: a split cost twice the sums)
        with memoryview(data) as view:
            sums = [crc32(view[e.offset - start : e.end - 1 - start]) for e in run]
        if sums == list(map(_crc32, run)):
            return data.replace(b"\n", b",")
        changed = next(e for e, crc in zip(run, sums, strict=True) if crc != e.crc32)
    found = f"no longer holds, at byte {changed.offset:,}, the request read there"
    raise InputChangedError.at(path, changed, found, "nothing of its batch was sent")


class _Refused(Exception):
    """Internal: the create was refused for now (``cause``); back off and retry."""

    def __init__(self, cause: Exception) -> None:
        super().__init__(str(cause))
        self.cause = cause


class Submitter:
    """The submitter's state: the client, the ledger, the shared capacity."""

    def __init__(
        self,
        *,
        client: Client,
        ledger: Ledger,
        config: PipelineConfig,
        capacity: Capacity,
        progress: JobCounters,
        clock: Callable[[], float] = time.time,
        reconcile: Callable[[int, int, int, float], Awaitable[str | None]] | None = None,
        sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
        canceling: anyio.Event | None = None,
        input_path: str | os.PathLike[str] | None = None,
    ) -> None:
        #: the job's input file, which entries without bytes are read back from
        self.input_path = input_path
        #: set once the job is being canceled: create nothing more
        self.canceling = canceling
        #: ``reconcile(local_id, request_count, body_bytes, sent_at)``: the id of the
        #: batch an unknown-outcome create made, or None when it certainly made none
        #: (the reconciler then released the intent to the spool)
        #: ``sleep``: the back-off wait (the runner's is cut short by a stop)
        self.sleep = sleep
        #: creates refused for now and tried again, over the job
        self.create_retries = 0
        self.client = client
        self.ledger = ledger
        self.config = config
        self.capacity = capacity
        self.progress = progress
        self.clock = clock
        self.reconcile = reconcile
        #: batch ids found by reconciliation, until recorded
        self._adopted: set[str] = set()

    async def process(self, chunk: Chunk) -> list[SubmittedBatch]:
        """Claim, send and record one chunk; the batches created."""
        claimed = await self.claim(chunk)
        if claimed is None:
            return []
        return await self.send(*claimed)

    async def claim(self, chunk: Chunk) -> tuple[int, list[Entry]] | None:
        """Claim one chunk (its rejects and checkpoint recorded with it): the intent's
        local id and the entries to send, None when there is nothing to send."""
        progress = self.progress
        if not chunk.entries:
            added = await self.ledger.record_rejects(
                chunk.rejects, checkpoint=chunk.checkpoint, line=chunk.line
            )
            progress.note_rejects(added)
            progress.accounted_line = max(progress.accounted_line, chunk.line)
            return None
        claim = await self.ledger.claim(
            chunk.entries, chunk.rejects, checkpoint=chunk.checkpoint, line=chunk.line
        )
        retries = 0
        if progress.retry_ids:
            for e in chunk.entries:
                if e.custom_id in progress.retry_ids:
                    progress.retry_ids.discard(e.custom_id)
                    retries += 1
        progress.retry_unclaimed -= retries
        progress.spooled -= retries
        entries = chunk.entries
        if claim.duplicates or claim.skipped or claim.deferred:
            # deferred: the ledger keeps them, and sends (spools) or rejects them later
            dropped = {*claim.duplicates, *claim.skipped, *claim.deferred}
            entries = [e for i, e in enumerate(entries) if i not in dropped]
            progress.deferred += len(claim.deferred)
            self._resolved(len(dropped))
        progress.note_settled(claim.settled, claim.released, 0)
        progress.note_rejects(claim.rejected)
        progress.accounted_line = max(progress.accounted_line, chunk.line)
        progress.estimated_cost_usd += sum([e.cost_usd for e in entries])
        progress.changed()
        if not entries:
            return None
        return claim.local_id, entries

    def _resolved(self, n: int) -> None:
        self.progress.outstanding -= n
        self.progress.changed()

    async def send(self, local_id: int, entries: list[Entry]) -> list[SubmittedBatch]:
        """Send one claimed intent (and the halves of it after a 413)."""
        n = len(entries)
        if self.canceling is not None and self.canceling.is_set():
            await self.ledger.release(local_id)  # the job is being canceled: send nothing
            self._spooled(n)
            return []
        if not await self.capacity.acquire(n):
            # stopping and the service is full: spool it for the next start
            await self.ledger.release(local_id)
            self._spooled(n)
            return []
        held = True
        try:
            batch_id = await self._create(local_id, entries)
            if batch_id is None:
                return []
            held = False  # the results stage releases it once the batch is collected
            return await self._created(local_id, batch_id, n)
        except RequestTooLargeError as exc:
            self.capacity.release(n)
            held = False
            return await self._too_large(local_id, entries, exc)
        finally:
            if held:
                self.capacity.release(n)

    async def _create(self, local_id: int, entries: list[Entry]) -> str | None:
        """POST the batch until the service answers for good: its id, or None when
        its requests were resolved otherwise (rejected for good, or spooled on a
        stop during a back-off)."""
        tries = 0
        while True:
            try:
                return await self._try_create(local_id, entries)
            except _Refused as refused:
                tries += 1
                self.create_retries += 1
                delay = create_backoff(tries, ceiling=self.config.max_create_backoff)
                logger.warning(
                    "batch create refused for now, trying again in %.1f s: %s",
                    delay,
                    refused.cause,
                    extra={"local_id": local_id, "tries": tries},
                )
                if not self.progress.stopping:
                    await self.sleep(delay)
                if self.progress.stopping:
                    # certainly not created: spool it for the next start
                    await self.ledger.release(local_id)
                    self._spooled(len(entries))
                    return None

    async def _try_create(self, local_id: int, entries: list[Entry]) -> str | None:
        """One POST; ``_Refused`` when the service refused it for now."""
        n = len(entries)
        raws = list(map(_raw, entries))
        # entries that came without their bytes (``raw`` empty) are read back
        body = (
            SplicedBody(raws)
            if self.input_path is None or all(raws)
            else InputBody(entries, self.input_path)
        )
        size = body.size
        sent_at = self.clock()
        await self.ledger.record_sending(local_id, body_bytes=size, sent_at=sent_at)
        try:
            batch = await self.client.create_batch(body, request_count=n)
        except (AuthenticationError, PermissionDeniedError, RequestTooLargeError):
            raise
        except InputChangedError:
            # the body was cut short before its end: certainly no batch, so its
            # requests wait in the spool (read again from the input once restored)
            # and the next start does not settle a create of unknown outcome
            await self.ledger.release(local_id)
            self._spooled(n)
            raise
        except CreateOutcomeUnknownError as exc:
            del body
            batch_id = await self._reconcile(local_id, n, size, sent_at, exc)
            if batch_id is None:
                self._spooled(n)
            else:
                self._adopted.add(batch_id)
            return batch_id
        except APIConnectionError as exc:
            raise _Refused(exc) from exc
        except APIStatusError as exc:
            if _try_later(exc):
                raise _Refused(exc) from exc
            await self.ledger.reject_batch(local_id, exc.error_type, exc.api_message)
            self.progress.note_rejects(n)
            self._resolved(n)
            return None
        return batch.id

    async def _created(self, local_id: int, batch_id: str, n: int) -> list[SubmittedBatch]:
        await self.ledger.record_created(local_id, batch_id)
        progress = self.progress
        progress.submitted += n
        progress.batches_submitted += 1
        progress.in_flight += n
        progress.batches_in_flight += 1
        logger.info(
            "batch created", extra={"batch_id": batch_id, "request_count": n, "local_id": local_id}
        )
        adopted = batch_id in self._adopted
        self._adopted.discard(batch_id)
        return [SubmittedBatch(local_id, batch_id, n, self.clock(), adopted)]

    def _spooled(self, n: int) -> None:
        self.progress.outstanding -= n
        self.progress.spooled += n
        self.progress.changed()

    async def _too_large(
        self, local_id: int, entries: list[Entry], exc: RequestTooLargeError
    ) -> list[SubmittedBatch]:
        if len(entries) == 1:
            await self.ledger.reject_batch(local_id, exc.error_type, exc.api_message)
            self.progress.note_rejects(1)
            self._resolved(1)
            return []
        half = len(entries) // 2
        parts = [entries[:half], entries[half:]]
        logger.warning(
            "batch too large for the service, splitting it",
            extra={"local_id": local_id, "request_count": len(entries)},
        )
        ids = await self.ledger.resplit(local_id, [[e.custom_id for e in p] for p in parts])
        out: list[SubmittedBatch] = []
        for new_id, part in zip(ids, parts, strict=True):
            out += await self.send(new_id, part)
        return out

    async def _reconcile(
        self, local_id: int, n: int, size: int, sent_at: float, exc: CreateOutcomeUnknownError
    ) -> str | None:
        """The batch an unknown-outcome create made, or None when it certainly
        made none (then its requests are spooled). Undecidable: the job fails and
        the intent stays in the ledger, to be reconciled on the next start."""
        if self.reconcile is None:
            raise exc
        logger.warning("batch create outcome unknown, reconciling", extra={"local_id": local_id})
        return await self.reconcile(local_id, n, size, sent_at)


async def submitter(
    receive: ObjectReceiveStream[Chunk],
    send: ObjectSendStream[list[SubmittedBatch]],
    /,
    *,
    client: Client,
    ledger: Ledger,
    config: PipelineConfig,
    capacity: Capacity,
    progress: JobCounters,
    clock: Callable[[], float] = time.time,
    reconcile: Callable[[int, int, int, float], Awaitable[str | None]] | None = None,
    sleep: Callable[[float], Awaitable[None]] = anyio.sleep,
    canceling: anyio.Event | None = None,
    input_path: str | os.PathLike[str] | None = None,
) -> None:
    """Create a batch per chunk and send it on to the poller. ``sleep`` is the
    back-off wait after a create refused for now (inject a virtual one in tests);
    once ``canceling`` is set (the job is being canceled), nothing more is created.
    ``input_path``: the job's input file, which the bytes of entries that came
    without them (``raw`` empty) are read back from (``InputBody``)."""
    state = Submitter(
        client=client,
        ledger=ledger,
        config=config,
        capacity=capacity,
        progress=progress,
        clock=clock,
        reconcile=reconcile,
        sleep=sleep,
        canceling=canceling,
        input_path=input_path,
    )
    async with receive, send:
        if config.one_chunk_at_a_time:
            async for chunk in receive:
                batches = await state.process(chunk)
                # let go of the chunk's entries now, not when the next chunk arrives
                del chunk
                if batches:
                    await send.send(batches)
            return
        # the next chunk is claimed while the last one's create is under way (the
        # claims stay in order: the ledger's checkpoint follows them); one create at
        # a time
        sending = anyio.Semaphore(1)

        async def create(local_id: int, entries: list[Entry]) -> None:
            try:
                batches = await state.send(local_id, entries)
            finally:
                sending.release()
            if batches:
                await send.send(batches)

        async with anyio.create_task_group() as tg:
            async for chunk in receive:
                claimed = await state.claim(chunk)
                del chunk
                if claimed is not None:
                    await sending.acquire()
                    tg.start_soon(create, *claimed)
