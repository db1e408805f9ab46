"""The stages of a pipeline, one module each, all of one shape:
``async def stage(receive, send, /, *, ...)`` over bounded anyio memory streams
that carry lists of items. ``pipeline.Pipeline`` wires them from a composition
(``Pipeline(stages=[...])``): the standard stages (``SOURCE``, ``VALIDATE``,
``DRY_RUN``, ``SPEND_GUARD``, ``CHUNKER``, ``SUBMITTER``, ``POLLER``, ``RESULTS``,
``SINK``) and the user's (``build_requests``, ``on_records``, ``on_requests``,
``process_results``); they can also be composed and tested on their own."""

from ._compose import CHUNKER as CHUNKER
from ._compose import DRY_RUN as DRY_RUN
from ._compose import POLLER as POLLER
from ._compose import RESULTS as RESULTS
from ._compose import SINK as SINK
from ._compose import SOURCE as SOURCE
from ._compose import SPEND_GUARD as SPEND_GUARD
from ._compose import STANDARD_STAGES as STANDARD_STAGES
from ._compose import SUBMITTER as SUBMITTER
from ._compose import VALIDATE as VALIDATE
from ._compose import Plan as Plan
from ._compose import StageSpec as StageSpec
from ._compose import build_requests as build_requests
from ._compose import compose as compose
from ._compose import on_records as on_records
from ._compose import on_requests as on_requests
from ._compose import process_results as process_results
from ._items import EndedBatch as EndedBatch
from ._items import Entry as Entry
from ._items import Flush as Flush
from ._items import RawLine as RawLine
from ._items import Reject as Reject
from ._items import RejectError as RejectError
from ._items import RejectLine as RejectLine
from ._items import SubmittedBatch as SubmittedBatch
from ._process import JoinedResult as JoinedResult
from ._process import ProcessingSink as ProcessingSink
from ._process import Routed as Routed
from ._protocol import Capacity as Capacity
from ._protocol import Chunk as Chunk
from ._protocol import JobCounters as JobCounters
from ._protocol import SourceStage as SourceStage
from ._protocol import Stage as Stage
from ._user import HeldLines as HeldLines
from ._user import Record as Record
from .chunker import ChunkHandoff as ChunkHandoff
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
    "CHUNKER",
    "DRY_RUN",
    "POLLER",
    "RESULTS",
    "SINK",
    "SOURCE",
    "SPEND_GUARD",
    "STANDARD_STAGES",
    "SUBMITTER",
    "VALIDATE",
    "HeldLines",
    "JoinedResult",
    "Plan",
    "ProcessingSink",
    "Record",
    "Routed",
    "StageSpec",
    "build_requests",
    "compose",
    "on_records",
    "on_requests",
    "process_results",
    "CallbackSink",
    "Capacity",
    "Chunk",
    "ChunkHandoff",
    "EndedBatch",
    "Entry",
    "Flush",
    "JsonlSink",
    "JobCounters",
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
