"""The exceptions of ``pipeline``, one rooted tree.

::

    PipelineError
    ├── APIError                    an HTTP call to the service failed for good
    │   ├── APIStatusError          the service answered with an error envelope
    │   │   ├── BadRequestError         400 invalid_request_error
    │   │   ├── AuthenticationError     401 authentication_error
    │   │   ├── PermissionDeniedError   403 permission_error
    │   │   ├── NotFoundError           404 not_found_error
    │   │   ├── RequestTooLargeError    413 request_too_large
    │   │   ├── RateLimitError          429 rate_limit_error
    │   │   ├── InternalServerError     500 api_error and other 5xx
    │   │   └── OverloadedError         529 overloaded_error
    │   ├── APIConnectionError      no answer: refused, reset, timed out
    │   └── CreateOutcomeUnknownError   a batch create was sent, no answer came
    ├── ResultStreamError           a results download broke and could not resume
    ├── InputError                  the job's input cannot be read at all
    ├── LedgerError                 the state file is corrupt, foreign or locked
    ├── StageError                  a stage failed; wraps the cause, names the stage
    ├── BudgetExceededError         the spend guard stopped submission
    │   └── UnpricedModelError      ... at a model it has no price for
    └── DryRunAbortedError          a dry run failed under the ``abort`` policy

Every message is built in ``__init__`` from the context attributes, and no
message ever includes an API key: the client redacts it at the boundary.
Misuse of the Python API raises ``UsageError`` (a ``RuntimeError``), outside the tree.

``Pipeline.run()`` surfaces one exception: the first stage failure, as a
``StageError`` whose ``__cause__`` is the original error (task-group
``ExceptionGroup``s are collapsed).
"""

from __future__ import annotations

__all__ = (
    "APIConnectionError",
    "APIError",
    "APIStatusError",
    "AuthenticationError",
    "BadRequestError",
    "BatchNotFoundError",
    "BudgetExceededError",
    "CreateOutcomeUnknownError",
    "DryRunAbortedError",
    "InputError",
    "InternalServerError",
    "LedgerError",
    "NotFoundError",
    "OverloadedError",
    "PermissionDeniedError",
    "PipelineError",
    "RateLimitError",
    "RequestTooLargeError",
    "ResultStreamError",
    "StageError",
    "TRANSIENT_ERRORS",
    "UnpricedModelError",
    "UsageError",
    "status_error_class",
)


class UsageError(RuntimeError):
    """The Python API was used the wrong way (e.g. a pipeline run twice)."""


class PipelineError(Exception):
    """Root of every error ``pipeline`` raises on purpose."""


class APIError(PipelineError):
    """An HTTP call to the service failed for good (after any retries)."""

    def __init__(self, message: str, *, method: str = "", url: str = "") -> None:
        self.method = method
        self.url = url
        super().__init__(message)


class APIStatusError(APIError):
    """The service answered with an error status and envelope."""

    def __init__(
        self,
        *,
        status_code: int,
        error_type: str,
        message: str,
        request_id: str | None = None,
        method: str = "",
        url: str = "",
    ) -> None:
        self.status_code = status_code
        self.error_type = error_type
        self.api_message = message
        self.request_id = request_id
        where = f" ({method} {url})" if method else ""
        rid = f" [request-id {request_id}]" if request_id else ""
        super().__init__(
            f"{status_code} {error_type}: {message}{where}{rid}", method=method, url=url
        )


class BadRequestError(APIStatusError):
    """400 invalid_request_error."""


class AuthenticationError(APIStatusError):
    """401 authentication_error."""


class PermissionDeniedError(APIStatusError):
    """403 permission_error."""


class NotFoundError(APIStatusError):
    """404 not_found_error."""


class RequestTooLargeError(APIStatusError):
    """413 request_too_large: the body is over the service's byte limit."""


class RateLimitError(APIStatusError):
    """429 rate_limit_error."""


class InternalServerError(APIStatusError):
    """500 api_error, and any other 5xx."""


class OverloadedError(InternalServerError):
    """529 overloaded_error."""


_BY_STATUS: dict[int, type[APIStatusError]] = {
    400: BadRequestError,
    401: AuthenticationError,
    403: PermissionDeniedError,
    404: NotFoundError,
    413: RequestTooLargeError,
    429: RateLimitError,
    529: OverloadedError,
}


def status_error_class(status_code: int) -> type[APIStatusError]:
    """The error class for an HTTP status, as the SDK maps them."""
    if status_code in _BY_STATUS:
        return _BY_STATUS[status_code]
    return InternalServerError if status_code >= 500 else APIStatusError


class APIConnectionError(APIError):
    """No answer from the service: connection refused, reset or timed out."""


#: Failures worth the same call again later, once the client's own tries are spent: a
#: burst of 429, 5xx (529 too) or connections refused or reset.
TRANSIENT_ERRORS = (RateLimitError, InternalServerError, APIConnectionError)


class CreateOutcomeUnknownError(APIError):
    """A batch create was sent but no answer came: it may or may not exist.

    Never re-send blindly; reconcile by listing the workspace's batches.
    """

    def __init__(self, *, request_count: int, body_bytes: int, sent_at: float, cause: str) -> None:
        self.request_count = request_count
        self.body_bytes = body_bytes
        self.sent_at = sent_at
        super().__init__(
            f"batch create of {request_count} requests ({body_bytes} bytes) has an unknown "
            f"outcome: {cause}; reconcile before re-sending",
            method="POST",
            url="/v1/messages/batches",
        )


class ResultStreamError(PipelineError):
    """A results download broke and could not be resumed."""

    def __init__(self, batch_id: str, reason: str) -> None:
        self.batch_id = batch_id
        super().__init__(f"results of {batch_id}: {reason}")


class InputError(PipelineError):
    """The job's input cannot be read at all (not a bad line: those are rejects)."""


class LedgerError(PipelineError):
    """The state file is corrupt, belongs to another job, or is in use; or a file
    the job wrote disagrees with it (``what``: which file ``path`` is)."""

    def __init__(self, path: str, reason: str, *, what: str = "state file") -> None:
        self.path = path
        self.what = what
        super().__init__(f"{what} {path}: {reason}")


class BatchNotFoundError(PipelineError):
    """A batch the ledger holds as created is unknown to the service (404)."""

    def __init__(self, batch_id: str, local_id: int) -> None:
        self.batch_id = batch_id
        self.local_id = local_id
        super().__init__(
            f"batch {batch_id} (local id {local_id}) is not found at the service. Check "
            "the API key and the base URL (another workspace does not see it); if it is "
            "gone for good (deleted elsewhere, or past its retention), `pipeline status "
            f"--state STATE --abandon {local_id}` sends what it did not write again, "
            "and pays for it again, on the next start"
        )


class StageError(PipelineError):
    """A stage failed; the original error is ``__cause__``."""

    def __init__(self, stage: str, cause: BaseException) -> None:
        self.stage = stage
        super().__init__(f"stage {stage!r} failed: {type(cause).__name__}: {cause}")


class BudgetExceededError(PipelineError):
    """The spend guard stopped submission: the next request would exceed the budget.

    ``line`` / ``custom_id`` name that request and ``not_submitted`` counts what was
    left unsent, when the raise site knows them (else None)."""

    def __init__(
        self,
        budget_usd: float,
        estimated_usd: float,
        *,
        line: int | None = None,
        custom_id: str | None = None,
        not_submitted: int | None = None,
    ) -> None:
        self.budget_usd = budget_usd
        self.estimated_usd = estimated_usd
        self.line = line
        self.custom_id = custom_id
        self.not_submitted = not_submitted
        budget, estimate = _distinct_usd(budget_usd, estimated_usd)
        which = _which(line, custom_id)
        request = f"the next request ({which})" if which else "the next request"
        left = f"; {not_submitted:,} requests not submitted" if not_submitted is not None else ""
        super().__init__(
            f"budget {budget} reached: {request} would bring the estimated cost to "
            f"{estimate}{left}; re-run with a larger --budget-usd to go on"
        )


class UnpricedModelError(BudgetExceededError):
    """The spend guard stopped submission at a request whose model the price table
    cannot price: with a budget set, a cost it cannot estimate is not let through as
    $0. ``model`` names it; the job stays resumable, as when the budget is reached."""

    def __init__(
        self,
        budget_usd: float,
        estimated_usd: float,
        *,
        model: str,
        line: int | None = None,
        custom_id: str | None = None,
    ) -> None:
        super().__init__(budget_usd, estimated_usd, line=line, custom_id=custom_id)
        self.model = model
        which = _which(line, custom_id)
        at = f" ({which})" if which else ""
        self.args = (
            f"budget {_trim_usd(f'{budget_usd:,.6f}')} cannot be enforced: no batch price for "
            f"model {model!r}{at}; give its prices with --price {model}=INPUT,OUTPUT (USD per "
            "million tokens at batch price; prices= in Python) and re-run",
        )


def _which(line: int | None, custom_id: str | None) -> str:
    """``line N, custom_id 'x'``, with what is known of a request."""
    parts = (
        f"line {line}" if line is not None else "",
        f"custom_id {custom_id!r}" if custom_id is not None else "",
    )
    return ", ".join(part for part in parts if part)


def _distinct_usd(a: float, b: float) -> tuple[str, str]:
    """Two amounts in dollars with as many decimals (6 to 10) as it takes for them
    to read differently when they differ; trailing zeros dropped down to cents."""
    for digits in range(6, 11):
        x, y = f"{a:,.{digits}f}", f"{b:,.{digits}f}"
        if x != y:
            break
    return _trim_usd(x), _trim_usd(y)


def _trim_usd(text: str) -> str:
    whole, _, cents = text.partition(".")
    return f"${whole}.{cents.rstrip('0').ljust(2, '0')}"


class DryRunAbortedError(PipelineError):
    """A dry-run sample failed under the ``abort`` policy."""

    def __init__(self, line: int, custom_id: str, message: str) -> None:
        self.line = line
        self.custom_id = custom_id
        super().__init__(
            f"dry run failed for line {line} (custom_id {custom_id!r}): {message}; "
            "job aborted before any batch of that shape was submitted"
        )
