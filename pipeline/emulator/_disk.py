"""The emulator's data directory: what a restarted emulator finds there.

With a data directory of its own, the emulator survives a restart, graceful or a
kill: each batch has a small record file, replaced whole (temp file, then
``os.replace``) at each change of what cannot be recomputed (create, cancel, end),
and the submissions log is appended to across runs. Nothing is fsynced: a kill of
the process loses nothing the OS already holds, which is the durability asked of a
local emulator. Layout::

    submissions.log             each custom_id of each create, one per line
    batches/<id>.meta.json      BatchMeta (below)
    batches/<id>.body.json      the create body, until the results exist
    batches/<id>.results.jsonl  the results, once ended (until archived)
    batches/*.tmp               a write cut short: removed at start

Order of writes, so that a kill at any point leaves a state the next start can
serve: a create writes its body (under a temp name), then its record (with where
its lines end in the log), then its lines in the log, then answers; an end writes
the results file, then the record (with the counts), then removes the body. A
start cuts off a torn last line of the log and writes the lines of the last create
that a kill kept out of it (from its body), so that the log counts each batch the
emulator holds, once.
"""

from __future__ import annotations

import collections
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import msgspec

from pipeline.api._types import RequestCounts

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = (
    "BODY",
    "META",
    "RESULTS",
    "SUBMISSIONS_LOG",
    "TMP",
    "BatchMeta",
    "batch_path",
    "open_log",
    "read_metas",
    "read_submissions",
    "sweep",
    "write_meta",
)

_log = logging.getLogger("pipeline.emulator")

#: The submissions log's name in the data directory.
SUBMISSIONS_LOG = "submissions.log"
META = ".meta.json"
BODY = ".body.json"
RESULTS = ".results.jsonl"
TMP = ".tmp"
_CHUNK = 1 << 20
_TAIL = 4096


class BatchMeta(msgspec.Struct, kw_only=True):
    """A batch's record on disk: what the clock and the config cannot recompute.
    The paths of its body and results follow from the id."""

    id: str
    seq: int
    workspace: str
    created: float
    count: int
    #: the size of the submissions log once this batch's custom_ids are in it
    log_end: int = 0
    cancel_at: float | None = None
    #: set once the results file exists (the body is then gone) ...
    counts: RequestCounts | None = None
    #: ... with the time the batch ended, fixed from then on
    ended: float | None = None


_meta_encoder = msgspec.json.Encoder()
_meta_decoder = msgspec.json.Decoder(BatchMeta)


def batch_path(folder: Path, batch_id: str, kind: str) -> Path:
    """The file of kind ``kind`` (``META``, ``BODY``, ``RESULTS``) of a batch."""
    return folder / f"{batch_id}{kind}"


def write_meta(folder: Path, meta: BatchMeta) -> None:
    """Write a batch's record, replacing the previous one whole."""
    path = batch_path(folder, meta.id, META)
    tmp = path.with_name(path.name + TMP)
    tmp.write_bytes(_meta_encoder.encode(meta))
    os.replace(tmp, path)


def read_metas(folder: Path) -> tuple[list[BatchMeta], set[str]]:
    """Every batch record in ``folder``, and the ids of those that cannot be read
    (left in place, with their files, for someone to look at)."""
    metas: list[BatchMeta] = []
    unreadable: set[str] = set()
    for path in folder.glob("*" + META):
        try:
            metas.append(_meta_decoder.decode(path.read_bytes()))
        except (OSError, msgspec.DecodeError) as exc:
            _log.warning("emulator: ignoring unreadable batch record %s: %s", path, exc)
            unreadable.add(path.name.partition(".")[0])
    return metas, unreadable


def sweep(folder: Path, live: Mapping[str, str | None]) -> None:
    """Remove what no batch needs: temp files, the files of batches not in ``live``,
    and the body or results of a live batch other than the one ``live`` names for
    it (``None``: keep all its files)."""
    for path in folder.iterdir():
        batch_id, _, rest = path.name.partition(".")
        kind = "." + rest
        wanted = live.get(batch_id, "")
        if kind.endswith(TMP) or wanted == "" or (wanted and kind not in (META, wanted)):
            path.unlink(missing_ok=True)


def open_log(path: Path) -> BinaryIO:
    """Open a log of lines for appending, positioned at its end; a torn last line (a
    write cut short by a kill) is cut off first, so that the next line does not run
    into it."""
    log = path.open("ab")
    end = log.tell()
    if not end:
        return log
    with path.open("rb") as tail:
        start = end
        while start > 0:
            start = max(0, start - _TAIL)
            tail.seek(start)
            block = tail.read(end - start)
            if block.endswith(b"\n"):
                break
            cut = block.rfind(b"\n")
            if cut >= 0 or start == 0:
                log.truncate(start + cut + 1)
                log.seek(0, os.SEEK_END)
                break
    return log


def read_submissions(data_dir: str | Path) -> dict[str, int]:
    """How many times each custom_id was submitted to the emulator whose data
    directory is ``data_dir``, from its submissions log (appended across restarts)."""
    counter: collections.Counter[str] = collections.Counter()
    with (Path(data_dir) / SUBMISSIONS_LOG).open("rb") as log:
        while chunk := log.readlines(_CHUNK):
            counter.update(line[:-1].decode() for line in chunk if line.endswith(b"\n"))
    return dict(counter)
