"""The durable state of a job: the ``Ledger`` interface and its embedded SQLite
implementation, plus reconciliation of batch creates with an unknown outcome."""

from ._base import BatchRecord as BatchRecord
from ._base import CancelState as CancelState
from ._base import ClaimResult as ClaimResult
from ._base import JobSpec as JobSpec
from ._base import JobStatus as JobStatus
from ._base import Ledger as Ledger
from ._base import ResumeState as ResumeState
from ._base import Settled as Settled
from ._base import SinkPosition as SinkPosition
from ._base import SpoolItem as SpoolItem
from ._cancel import request_cancel as request_cancel
from ._reconcile import AmbiguousCreateError as AmbiguousCreateError
from ._reconcile import ReconcileReport as ReconcileReport
from ._reconcile import reconcile as reconcile
from ._reconcile import reconciler as reconciler
from ._sqlite import SQLiteLedger as SQLiteLedger
from ._sqlite_schema import read_status as read_status

__all__ = (
    "AmbiguousCreateError",
    "BatchRecord",
    "CancelState",
    "ClaimResult",
    "JobSpec",
    "JobStatus",
    "Ledger",
    "ReconcileReport",
    "ResumeState",
    "SQLiteLedger",
    "Settled",
    "SinkPosition",
    "SpoolItem",
    "read_status",
    "reconcile",
    "reconciler",
    "request_cancel",
)
