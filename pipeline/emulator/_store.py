"""The emulator's state: batches, their life cycle, and their spooled bodies and results.

Memory stays flat with the number of requests: a batch's body goes to one file in
the data directory at create, and its results to another when it ends; only a small
``BatchRecord`` per batch stays in memory. The life cycle is computed lazily from the
clock each time a batch is looked at, so a 24-hour expiry costs no timer.

Processing model: the ``N`` requests of a batch are processed one after another,
uniformly over ``batch_seconds`` (request ``i`` at ``created + batch_seconds*(i+1)/N``).
A cancel or the expiry cuts that off; the requests not processed by then end
``canceled`` or ``expired``.
"""

from __future__ import annotations

import bisect
import collections
import contextlib
import hashlib
import logging
import random
import secrets
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import anyio
import anyio.lowlevel
import anyio.to_thread
import msgspec

from pipeline.api._schema import check_params, decode_error_message
from pipeline.api._types import (
    CustomId,
    ErrorDetail,
    ErroredResult,
    ErrorResponse,
    MessageBatch,
    MessageCreateParams,
    RequestCounts,
    ResultLine,
    SucceededResult,
)

from ._model import respond

if TYPE_CHECKING:
    from ._config import EmulatorConfig

__all__ = ("BatchRecord", "CreateError", "Store", "rfc3339")

_log = logging.getLogger("pipeline.emulator")
_CHUNK = 1 << 20
_YIELD_EVERY = 256
_ID_PREFIX = "msgbatch_"


class _EntryView(msgspec.Struct, forbid_unknown_fields=True):
    """A batch entry as checked at create: the params stay raw (validated later)."""

    custom_id: CustomId
    params: msgspec.Raw


class _BodyView(msgspec.Struct, forbid_unknown_fields=True):
    requests: list[_EntryView]


_body_decoder = msgspec.json.Decoder(_BodyView)
_params_decoder = msgspec.json.Decoder(MessageCreateParams)
_line_encoder = msgspec.json.Encoder()


class CreateError(Exception):
    """A create call the service refuses: ``error_type`` and a message for the envelope."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


def rfc3339(t: float) -> str:
    """``2024-08-20T18:37:24.100435Z``: the service's timestamp form."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) from ``parts``."""
    key = ":".join(map(str, parts)).encode()
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest()) / 2.0**64


class BatchRecord:
    """What the emulator keeps in memory about one batch: times, counts and paths."""

    __slots__ = (
        "body_path",
        "cancel_at",
        "count",
        "counts",
        "created",
        "generating",
        "id",
        "results_path",
        "results_size",
        "seq",
        "workspace",
    )

    def __init__(self, *, id: str, seq: int, workspace: str, created: float, count: int) -> None:
        self.id = id
        self.seq = seq
        self.workspace = workspace
        self.created = created
        self.count = count
        self.cancel_at: float | None = None
        self.counts: RequestCounts | None = None  # set once the results exist
        self.generating: anyio.Event | None = None
        self.body_path: Path | None = None
        self.results_path: Path | None = None
        self.results_size = 0


class Stats(msgspec.Struct):
    """Counters for ``GET /_emulator/stats``."""

    batches: int = 0
    batches_created: int = 0
    requests_created: int = 0
    bytes_received: int = 0
    results_generated: int = 0
    batches_deleted: int = 0


class Store:
    """All batches of all workspaces, and the files behind them."""

    def __init__(self, config: EmulatorConfig, data_dir: str | Path | None = None) -> None:
        self.config = config
        self._owned_dir = data_dir is None
        root = (
            Path(tempfile.mkdtemp(prefix="pipeline-emulator-"))
            if data_dir is None
            else Path(data_dir)
        )
        self.data_dir = root
        (root / "batches").mkdir(parents=True, exist_ok=True)
        self._batches: dict[str, BatchRecord] = {}
        self._by_workspace: dict[str, list[BatchRecord]] = collections.defaultdict(list)
        self._seq = 0
        # Ids are unique per emulator run (a restarted emulator never reuses an id);
        # everything random *inside* a batch derives from the seed and its sequence.
        self._nonce = secrets.token_hex(8)
        self.stats = Stats()
        self._submissions_path = root / "submissions.log"
        self._submissions = self._submissions_path.open("wb")

    # ------------------------------------------------------------------ lifecycle

    def close(self) -> None:
        """Close the submissions log; remove the data directory if it was a temp one."""
        if not self._submissions.closed:
            self._submissions.close()
        if self._owned_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)

    def now(self) -> float:
        """The current time by the configured clock."""
        return self.config.now()

    # ------------------------------------------------------------------ create

    def parse_create(self, body: bytes) -> list[str]:
        """Check a create body's envelope; return the custom_ids, or raise CreateError."""
        try:
            view = _body_decoder.decode(body)
        except msgspec.DecodeError as exc:
            raise CreateError("invalid_request_error", decode_error_message(exc)) from None
        requests = view.requests
        if not requests:
            raise CreateError("invalid_request_error", "requests: must hold at least 1 request")
        limit = self.config.max_batch_requests
        if len(requests) > limit:
            raise CreateError(
                "invalid_request_error",
                f"requests: {len(requests)} requests is more than the limit of {limit} per batch",
            )
        ids = [entry.custom_id for entry in requests]
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
        return ids

    async def create(self, workspace: str, body: bytes, custom_ids: list[str]) -> BatchRecord:
        """Register a checked batch and spool its body to disk."""
        self._seq += 1
        seq = self._seq
        suffix = hashlib.blake2b(f"{self._nonce}:{seq}".encode(), digest_size=7).hexdigest()
        batch_id = f"{_ID_PREFIX}{seq:010x}{suffix}"
        record = BatchRecord(
            id=batch_id, seq=seq, workspace=workspace, created=self.now(), count=len(custom_ids)
        )
        path = self.data_dir / "batches" / f"{batch_id}.body.json"
        log = ("\n".join(custom_ids) + "\n").encode()
        await anyio.to_thread.run_sync(path.write_bytes, body)
        self._submissions.write(log)
        self._submissions.flush()
        record.body_path = path
        self._batches[batch_id] = record
        self._by_workspace[workspace].append(record)
        self.stats.batches += 1
        self.stats.batches_created += 1
        self.stats.requests_created += len(custom_ids)
        self.stats.bytes_received += len(body)
        return record

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

    def _cutoff(self, record: BatchRecord) -> tuple[float, float, bool]:
        """(end time, processing cutoff, canceled?) of a batch."""
        cfg = self.config
        natural = min(record.created + cfg.batch_seconds, record.created + cfg.expiry_seconds)
        if record.cancel_at is not None and record.cancel_at < natural:
            end = min(record.cancel_at + cfg.cancel_seconds, record.created + cfg.expiry_seconds)
            return end, record.cancel_at, True
        return natural, natural, False

    def processed_count(self, record: BatchRecord) -> int:
        """How many requests (in index order) were processed before the cutoff."""
        _, cutoff, _ = self._cutoff(record)
        if self.config.batch_seconds <= 0:
            return record.count
        done = int((cutoff - record.created) / self.config.batch_seconds * record.count + 1e-9)
        return max(0, min(record.count, done))

    def status(
        self, record: BatchRecord, now: float
    ) -> Literal["in_progress", "canceling", "ended"]:
        """The processing status at ``now``."""
        end, _, _ = self._cutoff(record)
        if now >= end:
            return "ended"
        return "canceling" if record.cancel_at is not None else "in_progress"

    def archive_time(self, record: BatchRecord) -> float:
        """When the results stop being available."""
        end, _, _ = self._cutoff(record)
        return max(record.created + self.config.retention_seconds, end)

    async def look(self, record: BatchRecord) -> MessageBatch:
        """The batch as the API shows it now; produces its results when it has just ended."""
        now = self.now()
        status = self.status(record, now)
        if status == "ended":
            await self.ensure_results(record)
            if now >= self.archive_time(record):
                self._archive(record)
        return self.render(record, now, status)

    def render(
        self, record: BatchRecord, now: float, status: Literal["in_progress", "canceling", "ended"]
    ) -> MessageBatch:
        """The MessageBatch object (``results_url`` is filled in by the app)."""
        end, _, _ = self._cutoff(record)
        ended = status == "ended" and record.counts is not None
        archive = self.archive_time(record)
        counts = (
            record.counts if ended and record.counts else RequestCounts(processing=record.count)
        )
        return MessageBatch(
            id=record.id,
            processing_status="ended"
            if ended
            else ("canceling" if status == "canceling" else "in_progress"),
            request_counts=counts,
            created_at=rfc3339(record.created),
            expires_at=rfc3339(record.created + self.config.expiry_seconds),
            ended_at=rfc3339(end) if ended else None,
            cancel_initiated_at=None if record.cancel_at is None else rfc3339(record.cancel_at),
            archived_at=rfc3339(archive) if ended and now >= archive else None,
        )

    def cancel(self, record: BatchRecord) -> None:
        """Ask a batch to cancel (no-op if a cancel is already under way)."""
        if record.cancel_at is None:
            record.cancel_at = self.now()

    def delete(self, record: BatchRecord) -> None:
        """Forget a batch and remove its files."""
        self._batches.pop(record.id, None)
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
        body = await anyio.to_thread.run_sync(record.body_path.read_bytes)
        entries = _body_decoder.decode(body).requests
        processed = self.processed_count(record)
        _, _, canceled = self._cutoff(record)
        order = list(range(len(entries)))
        random.Random(_unit(self.config.seed, "order", record.seq)).shuffle(order)
        tail = (
            b'","result":{"type":"canceled"}}\n'
            if canceled
            else b'","result":{"type":"expired"}}\n'
        )
        counts = RequestCounts()
        path = self.data_dir / "batches" / f"{record.id}.results.jsonl"
        tmp = path.with_suffix(".tmp")
        buf = bytearray()
        try:
            with tmp.open("wb") as out:
                for n, index in enumerate(order):
                    entry = entries[index]
                    if index < processed:
                        self._process(record, entry, buf, counts)
                    else:
                        buf += b'{"custom_id":"' + entry.custom_id.encode() + tail
                    if len(buf) >= _CHUNK:
                        out.write(buf)
                        buf.clear()
                    if n % _YIELD_EVERY == _YIELD_EVERY - 1:
                        await anyio.lowlevel.checkpoint()
                out.write(buf)
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
        record.body_path.unlink(missing_ok=True)
        record.body_path = None
        record.counts = counts
        self.stats.results_generated += len(entries)

    def _process(
        self, record: BatchRecord, entry: _EntryView, buf: bytearray, counts: RequestCounts
    ) -> None:
        cid = entry.custom_id
        try:
            params = _params_decoder.decode(entry.params)
        except msgspec.DecodeError as exc:
            self._errored(cid, "invalid_request_error", decode_error_message(exc, "params."), buf)
            counts.errored += 1
            return
        try:
            problem = check_params(params, models=self.config.models)
        except Exception as exc:  # a bug in a check must not wedge the whole batch
            _log.exception("check_params failed on %s in %s", cid, record.id)
            problem = f"could not be checked ({type(exc).__name__})"
        if problem is not None:
            self._errored(cid, "invalid_request_error", "params." + problem, buf)
            counts.errored += 1
            return
        rate = self.config.request_error_rate
        if rate and _unit(self.config.seed, cid, record.seq) < rate:
            self._errored(cid, "api_error", "Internal server error (injected by the emulator)", buf)
            counts.errored += 1
            return
        message = respond(params, entry.params)
        _line_encoder.encode_into(ResultLine(cid, SucceededResult(message)), buf, -1)
        buf += b"\n"
        counts.succeeded += 1

    @staticmethod
    def _errored(custom_id: str, error_type: str, message: str, buf: bytearray) -> None:
        error = ErrorResponse(error=ErrorDetail(type=error_type, message=message))
        _line_encoder.encode_into(ResultLine(custom_id, ErroredResult(error)), buf, -1)
        buf += b"\n"

    # ------------------------------------------------------------------ admin

    def submissions(self) -> dict[str, int]:
        """How many times each custom_id was submitted, across all batches ever created."""
        self._submissions.flush()
        counter: collections.Counter[str] = collections.Counter()
        with self._submissions_path.open("rb") as log:
            while chunk := log.readlines(_CHUNK):
                counter.update(line[:-1].decode() for line in chunk)
        return dict(counter)
