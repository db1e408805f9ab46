"""Canceling a job from its state file alone, as ``pipeline cancel --state S`` does:
whether or not a worker runs it.

A worker holds the job's lock, so no second process may run the job; it may
still record the intent in the ledger (``ledger.request_cancel(path)``, one row,
no lock). The running worker notices it at its next check (once per poll
interval), cancels the batches at the service, collects them, marks the job
canceled and exits (``pipeline run`` / ``worker``: exit 4). ``cancel_job`` waits
for that by reading the state file (read-only, as ``pipeline status`` does); if
the worker ends without completing the cancel (killed), it completes it itself.

With no worker running, the job's own ``Pipeline`` is rebuilt from the paths the
state file holds and ``Pipeline.cancel()`` does the work here (on the embedded
emulator, its batches are in ``STATE.emulator/``, served again for the time).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import anyio
import msgspec

from ._config import DEFAULT_API_KEY_ENV, PipelineConfig
from ._stats import PipelineStatistics
from .ledger import JobStatus, read_status, request_cancel

if TYPE_CHECKING:
    import os
    from collections.abc import Callable

__all__ = ("CancelOutcome", "cancel_job")

#: How often the state file is read while a worker completes the cancel, in seconds.
DEFAULT_WAIT_INTERVAL = 0.2


class CancelOutcome(msgspec.Struct, frozen=True, kw_only=True):
    """What ``cancel_job`` found and did.

    ``how``: "canceled" (by this call), "by-worker" (the worker running the job
    completed it), "already" (canceled before), "finished" (nothing to cancel) or
    "recorded" (a job whose output is a callback, not a file: the intent is
    recorded and its next run completes the cancel). ``status``: the state file's
    status at the end; ``statistics``: those of the cancel when this call ran it.
    """

    how: Literal["canceled", "by-worker", "already", "finished", "recorded"]
    status: JobStatus
    statistics: PipelineStatistics | None = None


async def cancel_job(
    state: str | os.PathLike[str],
    *,
    api_key_env: str = DEFAULT_API_KEY_ENV,
    base_url: str | None = None,
    announce: Callable[[str], None] | None = None,
    wait_interval: float = DEFAULT_WAIT_INTERVAL,
) -> CancelOutcome:
    """Cancel the job whose state file is ``state`` (see the module docstring).
    ``api_key_env`` / ``base_url``: the service, as for ``Pipeline`` (defaults:
    the key in ``ANTHROPIC_API_KEY``, the URL in ``ANTHROPIC_BASE_URL``, else the
    embedded emulator). ``LedgerError`` when the state file
    is missing or not a pipeline's; API errors as a run raises them (the intent
    stays recorded: running the cancel again, or the job, completes it)."""
    status = await read_status(state)
    if status.finished:
        return CancelOutcome(how="finished", status=status)
    if status.cancel == "canceled":
        return CancelOutcome(how="already", status=status)
    if status.worker_running:
        await request_cancel(state)  # the worker notices it at its next poll
        status = await _wait_for_worker(state, wait_interval)
        if status.cancel == "canceled":
            return CancelOutcome(how="by-worker", status=status)
        if status.finished:  # it finished before it noticed: nothing to cancel
            return CancelOutcome(how="finished", status=status)
    job = status.job
    if job is None or job.output_path is None:
        await request_cancel(state)
        return CancelOutcome(how="recorded", status=await read_status(state))
    from ._pipeline import Pipeline

    pipeline = Pipeline(
        job.input_path if job.input_path is not None else [],
        job.output_path,
        job.rejects_path,
        state=state,
        config=PipelineConfig(api_key_env=api_key_env),  # the key: read and checked there
        base_url=base_url,
        announce=announce,
    )
    stats = await pipeline.cancel()
    return CancelOutcome(how="canceled", status=await read_status(state), statistics=stats)


async def _wait_for_worker(state: str | os.PathLike[str], interval: float) -> JobStatus:
    """Read the state until the cancel is complete or no worker holds the job."""
    while True:
        status = await read_status(state)
        if status.cancel == "canceled" or not status.worker_running:
            return status
        await anyio.sleep(interval)
