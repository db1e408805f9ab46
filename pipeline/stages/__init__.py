"""The stages of a pipeline, one module each, all of one shape:
``async def stage(receive, send, /, *, ...)`` over bounded anyio memory streams
that carry lists of items. ``pipeline.Pipeline`` wires them; they can also be
composed and tested on their own."""

from ._items import EndedBatch as EndedBatch
from ._items import Entry as Entry
from ._items import Flush as Flush
from ._items import RawLine as RawLine
from ._items import Reject as Reject
from ._items import RejectError as RejectError
from ._items import RejectLine as RejectLine
from ._items import SubmittedBatch as SubmittedBatch
from ._protocol import Capacity as Capacity
from ._protocol import Chunk as Chunk
from ._protocol import Progress as Progress
from ._protocol import SourceStage as SourceStage
from ._protocol import Stage as Stage
from .chunker import chunker as chunker
from .poller import poller as poller
from .results import results as results
from .retry import retry_feeder as retry_feeder
from .sink import CallbackSink as CallbackSink
from .sink import JsonlSink as JsonlSink
from .sink import ResultSink as ResultSink
from .sink import rejects_writer as rejects_writer
from .source import iterable_source as iterable_source
from .source import jsonl_source as jsonl_source
from .submitter import submitter as submitter
from .validate import validate as validate

__all__ = (
    "CallbackSink",
    "Capacity",
    "Chunk",
    "EndedBatch",
    "Entry",
    "Flush",
    "JsonlSink",
    "Progress",
    "RawLine",
    "Reject",
    "RejectError",
    "RejectLine",
    "ResultSink",
    "SourceStage",
    "Stage",
    "SubmittedBatch",
    "chunker",
    "iterable_source",
    "jsonl_source",
    "poller",
    "rejects_writer",
    "results",
    "retry_feeder",
    "submitter",
    "validate",
)
