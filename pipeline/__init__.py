"""pipeline: Messages requests through the Message Batches API at half price,
streamed in flat memory, crash-safe. The public API, re-exported one name a line."""

from ._config import PipelineConfig as PipelineConfig
from ._errors import APIConnectionError as APIConnectionError
from ._errors import APIError as APIError
from ._errors import APIStatusError as APIStatusError
from ._errors import BatchNotFoundError as BatchNotFoundError
from ._errors import BudgetExceededError as BudgetExceededError
from ._errors import CreateOutcomeUnknownError as CreateOutcomeUnknownError
from ._errors import DryRunAbortedError as DryRunAbortedError
from ._errors import InputError as InputError
from ._errors import LedgerError as LedgerError
from ._errors import PipelineError as PipelineError
from ._errors import ResultStreamError as ResultStreamError
from ._errors import StageError as StageError
from ._errors import UnpricedModelError as UnpricedModelError
from ._errors import UsageError as UsageError
from ._logging import configure_logging as configure_logging
from ._monitor import JobMonitor as JobMonitor
from ._monitor import JobSnapshot as JobSnapshot
from ._monitor import serve_job as serve_job
from ._observe import JobObserver as JobObserver
from ._pipeline import Pipeline as Pipeline
from ._pricing import DEFAULT_PRICES as DEFAULT_PRICES
from ._pricing import Price as Price
from ._pricing import PriceTable as PriceTable
from ._pricing import cache_write_factor as cache_write_factor
from ._pricing import cost_usd as cost_usd
from ._pricing import estimate_cost_usd as estimate_cost_usd
from ._progress import progress as progress
from ._progress import run_with_progress as run_with_progress
from ._stats import ModelUsage as ModelUsage
from ._stats import PipelineStatistics as PipelineStatistics
from ._summary import render_summary as render_summary
from ._worker import QueuePipeline as QueuePipeline
from ._worker import WatchPipeline as WatchPipeline
from .api import Client as Client
from .ledger import SQLiteLedger as SQLiteLedger
from .ledger import read_status as read_status
from .stages import SourceStage as SourceStage
from .stages.sink import CallbackSink as CallbackSink
from .stages.sink import JsonlSink as JsonlSink

__all__ = (
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "BatchNotFoundError",
    "BudgetExceededError",
    "CallbackSink",
    "Client",
    "CreateOutcomeUnknownError",
    "DEFAULT_PRICES",
    "DryRunAbortedError",
    "InputError",
    "JobMonitor",
    "JobObserver",
    "JobSnapshot",
    "JsonlSink",
    "LedgerError",
    "ModelUsage",
    "Pipeline",
    "PipelineConfig",
    "PipelineError",
    "PipelineStatistics",
    "Price",
    "PriceTable",
    "QueuePipeline",
    "SQLiteLedger",
    "SourceStage",
    "ResultStreamError",
    "StageError",
    "UnpricedModelError",
    "UsageError",
    "WatchPipeline",
    "configure_logging",
    "cache_write_factor",
    "cost_usd",
    "estimate_cost_usd",
    "progress",
    "read_status",
    "render_summary",
    "run_with_progress",
    "serve_job",
)
