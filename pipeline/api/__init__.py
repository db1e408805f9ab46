"""Wire types and the HTTP client of the Message Batches and Messages APIs."""

from ._body import SplicedBody as SplicedBody
from ._client import Client as Client
from ._types import BatchRequest as BatchRequest
from ._types import DeletedMessageBatch as DeletedMessageBatch
from ._types import ErrorResponse as ErrorResponse
from ._types import Message as Message
from ._types import MessageBatch as MessageBatch
from ._types import MessageBatchList as MessageBatchList
from ._types import MessageCreateParams as MessageCreateParams
from ._types import RequestCounts as RequestCounts
from ._types import ResultLine as ResultLine
from ._types import Usage as Usage

__all__ = (
    "BatchRequest",
    "Client",
    "DeletedMessageBatch",
    "ErrorResponse",
    "Message",
    "MessageBatch",
    "MessageBatchList",
    "MessageCreateParams",
    "RequestCounts",
    "ResultLine",
    "SplicedBody",
    "Usage",
)
