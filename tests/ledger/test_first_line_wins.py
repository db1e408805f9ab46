"""The ledger's contract on duplicate custom_ids (``pipeline.ledger.Ledger.claim``):
the first line claimed holds its custom_id for the whole job, whatever happens to
it; every later copy is a reject naming that line. Through the public interface
only, so that any layout of the ledger has to keep it."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pipeline.ledger import SinkPosition, SQLiteLedger

from ._helpers import JOB, entry

if TYPE_CHECKING:
    from pathlib import Path


async def messages(led: SQLiteLedger) -> list[tuple[int, str]]:
    return [(r.line, r.error.message) for r in await led.rejects_after(0, 100)]


async def test_the_first_line_holds_its_custom_id_through_spool_restart_and_refusal(
    state_path: Path,
) -> None:
    used = "custom_id 'a' already used on line 3"
    led = SQLiteLedger(state_path)
    await led.open(JOB)
    # in one claim: the second copy is the duplicate
    first = await led.claim([entry(3, cid="a"), entry(5, cid="a")], [], checkpoint=500, line=5)
    assert first.duplicates == [1]
    await led.record_sending(first.local_id, body_bytes=10, sent_at=1.0)
    await led.record_created(first.local_id, "msgbatch_1")
    await led.record_ended(first.local_id)
    # line 3 failed retryably: it waits in the spool, and still holds "a"
    await led.commit_results(first.local_id, output=SinkPosition(), written=0, spool=["a"])
    later = await led.claim([entry(8, cid="a")], [], checkpoint=800, line=8)
    assert (later.local_id, later.duplicates) == (0, [0])
    await led.aclose()

    led = SQLiteLedger(state_path)  # a restart
    resume = await led.open(JOB)
    assert resume.spooled == 1
    later = await led.claim([entry(9, cid="a")], [], checkpoint=900, line=9)
    assert later.duplicates == [0]
    retry = await led.claim([entry(3, cid="a", attempt=2)], [], checkpoint=900, line=9)
    assert (retry.duplicates, retry.skipped) == ([], [])  # line 3's own retry goes
    assert retry.local_id > 0
    # the service refuses the retry's batch for good: line 3 still holds "a"
    await led.reject_batch(retry.local_id, "invalid_request_error", "refused")
    later = await led.claim([entry(10, cid="a")], [], checkpoint=1000, line=10)
    assert later.duplicates == [0]
    # line 3 read again (a source replayed from an old checkpoint): never its own duplicate
    again = await led.claim([entry(3, cid="a")], [], checkpoint=1000, line=10)
    assert again.duplicates == []
    assert await messages(led) == [
        (5, used),
        (8, used),
        (9, used),
        (3, "refused"),
        (10, used),
    ]
    await led.aclose()
