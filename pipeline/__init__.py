"""pipeline: Messages requests through the Message Batches API at half price,
streamed in flat memory, crash-safe. The public API, re-exported one name a line."""

from ._config import PipelineConfig as PipelineConfig
from ._errors import APIConnectionError as APIConnectionError
from ._errors import APIError as APIError
from ._errors import APIStatusError as APIStatusError
from ._errors import BudgetExceededError as BudgetExceededError
from ._errors import CreateOutcomeUnknownError as CreateOutcomeUnknownError
from ._errors import DryRunAbortedError as DryRunAbortedError
from ._errors import InputError as InputError
from ._errors import LedgerError as LedgerError
from ._errors import PipelineError as PipelineError
from ._errors import ResultStreamError as ResultStreamError
from ._errors import StageError as StageError
from ._errors import UsageError as UsageError
from .api import Client as Client

__all__ = (
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "BudgetExceededError",
    "Client",
    "CreateOutcomeUnknownError",
    "DryRunAbortedError",
    "InputError",
    "LedgerError",
    "PipelineConfig",
    "PipelineError",
    "ResultStreamError",
    "StageError",
    "UsageError",
)
