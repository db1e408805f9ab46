"""The emulator's state: batches, their life cycle, and their spooled bodies and results.

Memory stays flat with the number of requests: a batch's body goes to one file in
the data directory at create, and its results to another when it ends; only a small
``BatchRecord`` per batch stays in memory. The life cycle is computed lazily from the
clock each time a batch is looked at, so a 24-hour expiry costs no timer (the record
and the processing model are in ``_batch``).

Durability: given a data directory (``data_dir``), the store survives a restart,
graceful or a kill: each batch's record is written there (see ``_disk``) and a new
Store on the same directory reloads them, so the batches created before are served
(an in-progress one ends on schedule from its ``created_at``; an ended one keeps its
results), and the submissions log goes on. Without one (a temp dir, removed at
close) no record is written.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import hashlib
import logging
import os
import random
import secrets
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from pipeline.api._schema import check_params, decode_error_message
from pipeline.api._types import (
    ErrorDetail,
    ErroredResult,
    ErrorResponse,
    MessageBatch,
    MessageCreateParams,
    RequestCounts,
    ResultLine,
    SucceededResult,
)

from ._batch import BatchRecord, BodyView, LaxBody, Timeline, rfc3339
from ._cache import PromptCache
from ._catalog import Catalog
from ._disk import (
    BODY,
    META,
    RESULTS,
    SUBMISSIONS_LOG,
    TMP,
    BatchMeta,
    batch_path,
    open_log,
    read_metas,
    read_submissions,
    sweep,
    write_meta,
)
from ._model import respond, result_line

if TYPE_CHECKING:
    from ._batch import EntryView, LaxEntry
    from ._config import EmulatorConfig

__all__ = ("NESTED_TOO_DEEPLY", "BatchRecord", "CreateError", "Parsed", "Store", "rfc3339")

_log = logging.getLogger("pipeline.emulator")
_CHUNK = 1 << 20
_YIELD_EVERY = 256
_ID_PREFIX = "msgbatch_"
#: How many of the latest batches keep their body in memory (processed from there when
#: they end before the next create; a 10,000-request body is ~6 MB).
_HELD_BATCHES = 1


_body_decoder = msgspec.json.Decoder(BodyView)
_lax_decoder = msgspec.json.Decoder(LaxBody)
_params_decoder = msgspec.json.Decoder(MessageCreateParams)
_line_encoder = msgspec.json.Encoder()
#: Bytes a custom_id may hold (``CustomId``), and a newline: what remains of the joined
#: ids once these are deleted must be nothing.
_ID_BYTES = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-\n"
_MAX_ID = 64
#: The 400 of a body nested deeper than the JSON decoder goes (the service's parser
#: refuses it too, with a 400, not a 500).
NESTED_TOO_DEEPLY = "The request body is not valid JSON: it is nested too deeply"


def _plain_ids(ids: list[str], joined: bytes) -> bool:
    """True if every id matches ``CustomId`` (``joined`` is each id followed by a newline).

    A few C calls over the whole batch instead of one regex call per id; False means
    "not sure" (the exact per-id check decides), never "invalid".
    """
    return (
        not joined.translate(None, _ID_BYTES)
        and joined.count(b"\n") == len(ids)
        and min(map(len, ids), default=1) >= 1
        and max(map(len, ids), default=0) <= _MAX_ID
    )


class Parsed(NamedTuple):
    """A create body that passed the envelope checks."""

    entries: list[LaxEntry] | list[EntryView]
    custom_ids: list[str]


class CreateError(Exception):
    """A create call the service refuses: ``error_type`` and a message for the envelope."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def _joined(ids: list[str]) -> bytes:
    """The ids, each followed by a newline (the submissions log's form)."""
    return ("\n".join(ids) + "\n").encode()


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    key = ":".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()) / 2.0**64


class Stats(msgspec.Struct):
    """Counters for ``GET /_emulator/stats``."""

    batches: int = 0
    batches_created: int = 0
    requests_created: int = 0
    bytes_received: int = 0
    results_generated: int = 0
    batches_deleted: int = 0
    #: batches reloaded from the data directory at start (a restart)
    batches_loaded: int = 0


class Store(Timeline):
    """All batches of all workspaces, and the files behind them."""

    def __init__(self, config: EmulatorConfig, data_dir: str | Path | None = None) -> None:
        self.config = config
        #: the models requests may name, and ``GET /v1/models``
        self.catalog = Catalog(config.models)
        self._owned_dir = data_dir is None
        #: batch records are written to, and reloaded from, the data directory
        self.durable = data_dir is not None
        root = (
            Path(tempfile.mkdtemp(prefix="pipeline-emulator-"))
            if data_dir is None
            else Path(data_dir)
        )
        self.data_dir = root
        self._dir = root / "batches"
        self._dir.mkdir(parents=True, exist_ok=True)
        self._batches: dict[str, BatchRecord] = {}
        self._by_workspace: dict[str, list[BatchRecord]] = collections.defaultdict(list)
        self._seq = 0
        # Ids are unique per emulator run, and across restarts on one data directory
        # (the sequence goes on from the batches reloaded); everything random *inside*
        # a batch derives from the seed and its sequence.
        self._nonce = secrets.token_hex(8)
        self._staged = 0
        self.stats = Stats()
        #: the prompt cache, shared by batches and Messages calls (``_cache``)
        self.cache = PromptCache(config.prompt_cache_entries)
        # Bodies of the latest batches, still in memory (see ``create``); None when
        # the body is on disk already (durable).
        self._held: dict[str, tuple[BatchRecord, bytes | None]] = {}
        if self.durable:
            self._load()
        self._submissions_path = root / SUBMISSIONS_LOG
        self._submissions = open_log(self._submissions_path)
        self._log_size = self._submissions.tell()
        if self.durable:
            self._complete_log()

    # ------------------------------------------------------------------ on disk

    def _path(self, batch_id: str, kind: str) -> Path:
        return batch_path(self._dir, batch_id, kind)

    def _save(self, record: BatchRecord) -> None:
        """Write the batch's record to the data directory (durable only)."""
        if self.durable:
            fields = BatchMeta.__struct_fields__  # named as the BatchRecord's attributes
            write_meta(self._dir, BatchMeta(**{name: getattr(record, name) for name in fields}))

    def _load(self) -> None:
        """Reload the batches a previous run left in the data directory, and remove
        the files no batch needs (temp files, leftovers of a kill or a delete)."""
        metas, unreadable = read_metas(self._dir)
        records = sorted(filter(None, map(self._revive, metas)), key=lambda r: r.seq)
        live: dict[str, str | None] = dict.fromkeys(unreadable)
        for record in records:
            self._batches[record.id] = record
            self._by_workspace[record.workspace].append(record)
            live[record.id] = BODY if record.counts is None else RESULTS
        self._seq = records[-1].seq if records else 0
        self.stats.batches = self.stats.batches_loaded = len(records)
        sweep(self._dir, live)

    def _complete_log(self) -> None:
        """Write the lines of the last create that a kill kept out of the log."""
        last = max(self._batches.values(), key=lambda r: r.log_end, default=None)
        if last is None or last.log_end <= self._log_size or last.body_path is None:
            return
        ids = [e.custom_id for e in _lax_decoder.decode(last.body_path.read_bytes()).requests]
        joined = _joined(ids)
        done = self._log_size - (last.log_end - len(joined))
        if done < 0:  # more is missing than the last create: not the log of these batches
            _log.warning("emulator: %s is shorter than its batches say", SUBMISSIONS_LOG)
            return
        self._log(joined[done:])

    def _log(self, lines: bytes) -> None:
        self._submissions.write(lines)
        self._submissions.flush()
        self._log_size += len(lines)

    def _revive(self, meta: BatchMeta) -> BatchRecord | None:
        """The in-memory record of a batch reloaded from disk (None if unusable)."""
        record = BatchRecord(
            id=meta.id,
            seq=meta.seq,
            workspace=meta.workspace,
            created=meta.created,
            count=meta.count,
        )
        record.cancel_at, record.log_end = meta.cancel_at, meta.log_end
        if meta.counts is None or meta.ended is None:  # not ended: processed from its body
            record.body_path = self._path(meta.id, BODY)
            if not record.body_path.exists():
                _log.warning("emulator: batch %s has lost its body; dropped", meta.id)
                self._path(meta.id, META).unlink(missing_ok=True)
                return None
            return record
        record.counts, record.ended = meta.counts, meta.ended
        results = self._path(meta.id, RESULTS)
        with contextlib.suppress(FileNotFoundError):  # archived
            record.results_size = results.stat().st_size
            record.results_path = results
        return record

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the submissions log; remove the data directory if it was a temp one."""
        self._held.clear()
        if not self._submissions.closed:
            self._submissions.close()
        if self._owned_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def now(self) -> float:
        """The current time by the configured clock."""
        return self.config.now()

    # ------------------------------------------------------------------ create

    def parse_create(self, body: bytes) -> Parsed:
        """Check a create body's envelope; return its entries, or raise CreateError."""
        entries: list[LaxEntry] | list[EntryView]
        try:
            entries = _lax_decoder.decode(body).requests
            ids = [entry.custom_id for entry in entries]
            plain = _plain_ids(ids, _joined(ids))
        except (msgspec.DecodeError, UnicodeError):
            plain = False
        except RecursionError:
            raise CreateError("invalid_request_error", NESTED_TOO_DEEPLY) from None
        if not plain:
            # The exact check: it raises the service's message for the first bad entry
            # (or accepts what the quick one was unsure of).
            try:
                entries = _body_decoder.decode(body).requests
            except msgspec.DecodeError as exc:
                raise CreateError("invalid_request_error", decode_error_message(exc)) from None
            except RecursionError:
                raise CreateError("invalid_request_error", NESTED_TOO_DEEPLY) from None
            ids = [entry.custom_id for entry in entries]
        if not ids:
            raise CreateError("invalid_request_error", "requests: must hold at least 1 request")
        limit = self.config.max_batch_requests
        if len(ids) > limit:
            raise CreateError(
                "invalid_request_error",
                f"requests: {len(ids)} requests is more than the limit of {limit} per batch",
            )
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            for i, cid in enumerate(ids):
                if cid in seen:
                    raise CreateError(
                        "invalid_request_error",
                        f'requests[{i}].custom_id: duplicate custom_id "{cid}"; '
                        "custom_id must be unique within a batch",
                    )
                seen.add(cid)
        return Parsed(entries, ids)

    async def create(self, workspace: str, body: bytes, parsed: Parsed) -> BatchRecord:
        """Register a checked batch. Its entries are kept in memory until the next
        create; durable, the body is written before the batch exists (and its record
        right after), else it is spooled to disk at the next create (unless it was
        processed in the meantime)."""
        staged = await self._stage(body) if self.durable else None
        custom_ids = parsed.custom_ids
        self._seq += 1
        seq = self._seq
        suffix = hashlib.blake2b(f"{self._nonce}:{seq}".encode(), digest_size=7).hexdigest()
        batch_id = f"{_ID_PREFIX}{seq:010x}{suffix}"
        record = BatchRecord(
            id=batch_id, seq=seq, workspace=workspace, created=self.now(), count=len(custom_ids)
        )
        record.body_path = self._path(batch_id, BODY)
        record.held = parsed.entries
        if staged is not None:
            os.replace(staged, record.body_path)
        joined = _joined(custom_ids)
        record.log_end = self._log_size + len(joined)
        self._save(record)  # first: a restart completes the log from the record
        self._log(joined)
        self._batches[batch_id] = record
        self._by_workspace[workspace].append(record)
        self.stats.batches += 1
        self.stats.batches_created += 1
        self.stats.requests_created += len(custom_ids)
        self.stats.bytes_received += len(body)
        self._held[batch_id] = (record, None if staged is not None else body)
        while len(self._held) > _HELD_BATCHES:
            await self._spool(*self._held.pop(next(iter(self._held))))
        return record

    async def _stage(self, body: bytes) -> Path:
        """Write a create body under a temp name (the batch id is not known yet)."""
        self._staged += 1
        path = self._dir / f"{self._nonce}-{self._staged}{BODY}{TMP}"
        try:
            await anyio.to_thread.run_sync(path.write_bytes, body)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path

    async def _spool(self, record: BatchRecord, body: bytes | None) -> None:
        """Write a held body to disk; from then on the file is the batch's only copy."""
        held, path = record.held, record.body_path
        if held is None or path is None:
            return  # processed or deleted already
        if body is None:  # on disk since the create
            record.held = None
            return
        await anyio.to_thread.run_sync(path.write_bytes, body)
        if record.held is held:
            record.held = None
        else:  # processed or deleted while it was being written: nobody needs the file
            path.unlink(missing_ok=True)

    # ------------------------------------------------------------------ look up

    def get(self, workspace: str, batch_id: str) -> BatchRecord | None:
        """The batch, or None if it does not exist in this workspace."""
        record = self._batches.get(batch_id)
        return record if record is not None and record.workspace == workspace else None

    def batches(self) -> list[BatchRecord]:
        """Every live batch (for assertions in tests)."""
        return list(self._batches.values())

    @staticmethod
    def cursor_seq(batch_id: str) -> int | None:
        """The creation sequence number encoded in a batch id, or None if malformed."""
        if not batch_id.startswith(_ID_PREFIX) or len(batch_id) != len(_ID_PREFIX) + 24:
            return None
        try:
            return int(batch_id[len(_ID_PREFIX) : len(_ID_PREFIX) + 10], 16)
        except ValueError:
            return None

    def page(
        self, workspace: str, limit: int, before: int | None, after: int | None
    ) -> tuple[list[BatchRecord], bool]:
        """One page of the workspace's batches, newest first, and whether more follow."""
        records = self._by_workspace.get(workspace, [])
        if after is not None:
            hi = bisect.bisect_left(records, after, key=lambda r: r.seq)
            lo = max(0, hi - limit)
            return records[lo:hi][::-1], lo > 0
        if before is not None:
            lo = bisect.bisect_right(records, before, key=lambda r: r.seq)
            hi = min(len(records), lo + limit)
            return records[lo:hi][::-1], hi < len(records)
        lo = max(0, len(records) - limit)
        return records[lo:][::-1], lo > 0

    # ------------------------------------------------------------------ life cycle

    async def look(self, record: BatchRecord) -> MessageBatch:
        """The batch as the API shows it now; produces its results when it has just ended."""
        now = self.now()
        status = self.status(record, now)
        if status == "ended":
            await self.ensure_results(record)
            if now >= self.archive_time(record):
                self._archive(record)
        return self.render(record, now, status)

    def cancel(self, record: BatchRecord) -> None:
        """Ask a batch to cancel (no-op if a cancel is already under way)."""
        if record.cancel_at is None:
            record.cancel_at = self.now()
            self._save(record)

    def delete(self, record: BatchRecord) -> None:
        """Forget a batch and remove its files (its record first)."""
        if self.durable:
            self._path(record.id, META).unlink(missing_ok=True)
        self._batches.pop(record.id, None)
        self._held.pop(record.id, None)
        record.held = None
        with contextlib.suppress(ValueError):
            self._by_workspace[record.workspace].remove(record)
        for path in (record.body_path, record.results_path):
            if path is not None:
                path.unlink(missing_ok=True)
        record.body_path = record.results_path = None
        self.stats.batches -= 1
        self.stats.batches_deleted += 1

    def _archive(self, record: BatchRecord) -> None:
        if record.results_path is not None:
            record.results_path.unlink(missing_ok=True)
            record.results_path = None

    def is_archived(self, record: BatchRecord) -> bool:
        """True once the results of an ended batch are gone for good."""
        return self.now() >= self.archive_time(record)

    # ------------------------------------------------------------------ results

    async def ensure_results(self, record: BatchRecord) -> None:
        """Write the results file of an ended batch once; concurrent callers wait."""
        while record.counts is None:
            if record.generating is not None:
                await record.generating.wait()
                continue
            record.generating = anyio.Event()
            try:
                await self._generate(record)
            finally:
                record.generating.set()
                record.generating = None

    async def _generate(self, record: BatchRecord) -> None:
        assert record.body_path is not None
        entries: list[LaxEntry] | list[EntryView]
        body: bytes | None = None
        if record.held is not None:
            entries, record.held = record.held, None
            body = self._held.pop(record.id, (None, None))[1]
        else:
            body = await anyio.to_thread.run_sync(record.body_path.read_bytes)
            # The body passed the create's checks: the lax view (no id pattern) is enough.
            entries = _lax_decoder.decode(body).requests
        processed = self.processed_count(record)
        end, _, canceled = self._cutoff(record)
        order = list(range(len(entries)))
        random.Random(_unit(self.config.seed, "order", record.seq)).shuffle(order)
        tail = (
            b'","result":{"type":"canceled"}}\n'
            if canceled
            else b'","result":{"type":"expired"}}\n'
        )
        counts = RequestCounts()
        path = self._path(record.id, RESULTS)
        tmp = path.with_name(path.name + TMP)
        process = self._process
        # request i is processed at created + batch_seconds * (i + 1) / N (``_batch``);
        # a body with no cache_control at all (one search of it) skips the cache per entry
        step = self.config.batch_seconds / max(1, len(entries))
        cache = body is None or b'"cache_control"' in body
        lines: list[bytes] = []
        size = 0
        try:
            with tmp.open("wb") as out:
                for start in range(0, len(order), _YIELD_EVERY):
                    for index in order[start : start + _YIELD_EVERY]:
                        entry = entries[index]
                        if index < processed:
                            at = record.created + step * (index + 1) if cache else None
                            line = process(record, entry, counts, at)
                        else:
                            line = b'{"custom_id":"' + entry.custom_id.encode() + tail
                        lines.append(line)
                        size += len(line)
                    if size >= _CHUNK:
                        out.write(b"".join(lines))
                        lines.clear()
                        size = 0
                    await anyio.lowlevel.checkpoint()
                out.write(b"".join(lines))
            tmp.replace(path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        unprocessed = len(entries) - processed
        if canceled:
            counts.canceled = unprocessed
        else:
            counts.expired = unprocessed
        record.results_path = path
        record.results_size = path.stat().st_size
        record.counts, record.ended = counts, end
        self._save(record)  # the end is on record before the body goes
        record.body_path.unlink(missing_ok=True)
        record.body_path = None
        self.stats.results_generated += len(entries)

    def _process(
        self,
        record: BatchRecord,
        entry: LaxEntry | EntryView,
        counts: RequestCounts,
        at: float | None,
    ) -> bytes:
        """The results line of one processed request (at time ``at``; None when the
        batch has no prompt-cache breakpoint): its params are strictly decoded and
        checked here, once, as the service does after the create."""
        cid = entry.custom_id
        raw: bytes | msgspec.Raw = entry.params
        if self.config.allow_fields:
            raw = self.config.without_allowed(bytes(raw))
        try:
            params = _params_decoder.decode(raw)
        except msgspec.DecodeError as exc:
            counts.errored += 1
            return self._errored(cid, "invalid_request_error", decode_error_message(exc, "params."))
        except RecursionError:
            counts.errored += 1
            return self._errored(cid, "invalid_request_error", NESTED_TOO_DEEPLY)
        if not self.catalog.accepts(params.model):
            counts.errored += 1
            return self._errored(cid, "not_found_error", f"model: {params.model}")
        try:
            problem = check_params(params, models=None, raw=raw)
        except Exception as exc:  # a bug in a check must not wedge the whole batch
            _log.exception("check_params failed on %s in %s", cid, record.id)
            problem = f"could not be checked ({type(exc).__name__})"
        if problem is not None:
            counts.errored += 1
            return self._errored(cid, "invalid_request_error", "params." + problem)
        rate = self.config.request_error_rate
        if rate and _unit(self.config.seed, cid, record.seq) < rate:
            counts.errored += 1
            return self._errored(
                cid, "api_error", "Internal server error (injected by the emulator)"
            )
        counts.succeeded += 1
        raw = entry.params
        cached = None
        if at is not None and b'"cache_control"' in bytes(raw):  # the cache walks its blocks
            cached = self.cache.usage(params, record.workspace, at)
        line = result_line(cid, params, raw) if cached is None else None
        if line is None:
            message = respond(params, raw, cached=cached)
            line = _line_encoder.encode(ResultLine(cid, SucceededResult(message))) + b"\n"
        return line

    @staticmethod
    def _errored(custom_id: str, error_type: str, message: str) -> bytes:
        error = ErrorResponse(error=ErrorDetail(type=error_type, message=message))
        return _line_encoder.encode(ResultLine(custom_id, ErroredResult(error))) + b"\n"

    # ------------------------------------------------------------------ admin

    def submissions(self) -> dict[str, int]:
        """How many times each custom_id was submitted, across all batches ever created."""
        self._submissions.flush()
        return read_submissions(self.data_dir)
