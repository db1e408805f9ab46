"""The poller in virtual time: adaptive intervals, backoff, one emit per ended batch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from pipeline._config import PipelineConfig
from pipeline._errors import RateLimitError
from pipeline.api._types import MessageBatch, RequestCounts
from pipeline.stages._items import EndedBatch, SubmittedBatch
from pipeline.stages.poller import next_interval, poller

if TYPE_CHECKING:
    from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream


def batch_view(batch_id: str, *, ended: bool) -> MessageBatch:
    """The service's view of a batch of 5 requests, in progress or ended."""
    return MessageBatch(
        id=batch_id,
        processing_status="ended" if ended else "in_progress",
        request_counts=RequestCounts(processing=0 if ended else 5, succeeded=5 if ended else 0),
        created_at="2024-01-01T00:00:00Z",
        expires_at="2024-01-02T00:00:00Z",
        results_url=f"/v1/messages/batches/{batch_id}/results" if ended else None,
    )


class FakeClient:
    """A batch ends after ``polls_to_end`` retrieves; the first retrieve is a 429."""

    def __init__(self, polls_to_end: int) -> None:
        self.polls_to_end = polls_to_end
        self.calls: list[tuple[float, str]] = []
        self.now = 0.0

    async def retrieve_batch(self, batch_id: str) -> MessageBatch:
        self.calls.append((self.now, batch_id))
        if len(self.calls) == 1:
            raise RateLimitError(
                status_code=429, error_type="rate_limit_error", message="slow down"
            )
        n = sum(1 for _, b in self.calls if b == batch_id)
        ended = n >= self.polls_to_end
        return batch_view(batch_id, ended=ended)


class FakeLedger:
    def __init__(self) -> None:
        self.ended: list[int] = []

    async def record_ended(self, local_id: int) -> None:
        self.ended.append(local_id)


def test_interval_grows_with_age_and_resets_when_counts_move() -> None:
    assert next_interval(age=5, moved=False, floor=1, ceiling=60, previous=1) == 1
    assert next_interval(age=300, moved=False, floor=1, ceiling=60, previous=1) == 30
    assert next_interval(age=9999, moved=False, floor=1, ceiling=60, previous=30) == 60
    assert next_interval(age=9999, moved=True, floor=1, ceiling=60, previous=60) == 1


async def test_poller_emits_each_ended_batch_once_in_virtual_time() -> None:
    client = FakeClient(polls_to_end=4)
    ledger = FakeLedger()
    now = [0.0]
    sleeps: list[float] = []

    def clock() -> float:
        return now[0]

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        client.now = now[0]
        await anyio.lowlevel.checkpoint()

    config = PipelineConfig(poll_interval=2.0, max_poll_interval=60.0, dry_run="off")
    send_in, recv_in = anyio.create_memory_object_stream[list[SubmittedBatch]](4)
    send_out, recv_out = anyio.create_memory_object_stream[list[EndedBatch]](4)
    fake: Any = client
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: poller(
                recv_in,
                send_out,
                client=fake,
                ledger=ledger,
                config=config,
                clock=clock,
                sleep=sleep,  # type: ignore[arg-type]
            )
        )
        async with send_in:
            await send_in.send([SubmittedBatch(1, "b1", 5, 0.0), SubmittedBatch(2, "b2", 5, 0.0)])
        ended: list[EndedBatch] = []
        async with recv_out:
            async for batch in recv_out:
                ended += batch
    assert sorted(e.batch_id for e in ended) == ["b1", "b2"]
    assert sorted(ledger.ended) == [1, 2]
    assert all(s > 0 for s in sleeps)  # it never spins
    assert min(sleeps) >= 2.0 - 1e-9  # never faster than the floor
    assert len(client.calls) <= 2 * 4 + 1  # no hammering: 4 looks each, plus the 429


class SteadyClient:
    """Every batch stays in progress (same counts) for ``looks`` retrieves, then ends."""

    def __init__(self, looks: int) -> None:
        self.looks = looks
        self.calls = 0

    async def retrieve_batch(self, batch_id: str) -> MessageBatch:
        self.calls += 1
        ended = self.calls > self.looks
        return batch_view(batch_id, ended=ended)


async def sleeps_for(batch_age: float, *, resumed: bool, looks: int = 3) -> list[float]:
    """The poller's sleeps for one batch ``batch_age`` seconds old (wall clock) at
    start, while the monotonic clock starts near zero, as after a restart."""
    now = [0.0]
    wall_start = 1_700_000_000.0
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        await anyio.lowlevel.checkpoint()

    batch = SubmittedBatch(1, "b1", 5, wall_start - batch_age)
    config = PipelineConfig(poll_interval=2.0, max_poll_interval=60.0, dry_run="off")
    send_in, recv_in = anyio.create_memory_object_stream[list[SubmittedBatch]](4)
    send_out, recv_out = anyio.create_memory_object_stream[list[EndedBatch]](4)
    fake: Any = SteadyClient(looks=looks)
    async with anyio.create_task_group() as tg:
        tg.start_soon(
            lambda: poller(
                recv_in,
                send_out,
                client=fake,
                ledger=FakeLedger(),
                config=config,
                resumed=[batch] if resumed else None,
                clock=lambda: now[0],
                wall_clock=lambda: wall_start + now[0],
                sleep=sleep,  # type: ignore[arg-type]
            )
        )
        async with send_in:
            if not resumed:
                await send_in.send([batch])
        async with recv_out:
            ended = [b async for chunk in recv_out for b in chunk]
    assert [b.batch_id for b in ended] == ["b1"]
    return sleeps


async def test_a_resumed_batch_is_polled_by_its_real_age() -> None:
    # submitted two hours before the restart: looked at once, then every minute
    # (a tenth of its age, capped), not at the floor as if it were brand new
    sleeps = await sleeps_for(7200.0, resumed=True)
    assert sleeps == [60.0, 60.0, 60.0]


async def test_a_fresh_batch_gets_three_quick_looks_then_the_floor_and_slows_with_age() -> None:
    # a short batch is seen ending at 0.25, 0.5 or 1 s instead of waiting a full
    # 2 s floor; from the floor's age on it is never looked at faster than the floor
    sleeps = await sleeps_for(0.0, resumed=False, looks=8)
    assert sleeps[:4] == [0.25, 0.25, 0.5, 1.0]  # looks at ages 0.25, 0.5, 1, 2
    assert all(s == 2.0 for s in sleeps[4:])
    assert sleeps == sorted(sleeps)  # never faster as it ages
    assert len(sleeps) == 9  # one sleep per look: no spinning, no extra polls


def test_young_batches_are_looked_at_when_their_age_doubles() -> None:
    assert next_interval(age=0.0, moved=False, floor=1, ceiling=60) == 0.125
    assert next_interval(age=0.3, moved=False, floor=1, ceiling=60, previous=0.25) == 0.3
    assert next_interval(age=0.3, moved=True, floor=1, ceiling=60, previous=0.25) == 0.3
    assert next_interval(age=1.0, moved=False, floor=1, ceiling=60, previous=0.5) == 1


class EndsAtLook:
    """Each batch stays in progress until its ``looks[batch_id]``-th retrieve."""

    def __init__(self, looks: dict[str, int]) -> None:
        self.looks = looks
        self.calls: list[str] = []

    async def retrieve_batch(self, batch_id: str) -> MessageBatch:
        self.calls.append(batch_id)
        ended = self.calls.count(batch_id) >= self.looks[batch_id]
        return batch_view(batch_id, ended=ended)


WALL_START = 1_700_000_000.0


def watch_an_old_batch(
    tg: anyio.abc.TaskGroup,
    client: Any,
    sleep: Any,
    now: list[float],
    batch_id: str,
) -> tuple[
    MemoryObjectSendStream[list[SubmittedBatch]], MemoryObjectReceiveStream[list[EndedBatch]]
]:
    """Start a poller (floor 2 s, ceiling a minute) on a batch submitted two hours
    before the clock's ``now``, its input left open: the ends to send it batches and to
    take the ended ones."""
    config = PipelineConfig(poll_interval=2.0, max_poll_interval=60.0, dry_run="off")
    send_in, recv_in = anyio.create_memory_object_stream[list[SubmittedBatch]](4)
    send_out, recv_out = anyio.create_memory_object_stream[list[EndedBatch]](4)
    tg.start_soon(
        lambda: poller(
            recv_in,
            send_out,
            client=client,
            ledger=FakeLedger(),
            config=config,
            resumed=[SubmittedBatch(1, batch_id, 5, WALL_START - 7200.0)],
            clock=lambda: now[0],
            wall_clock=lambda: WALL_START + now[0],
            sleep=sleep,
        )
    )
    return send_in, recv_out


async def test_an_old_batch_is_looked_at_on_its_schedule_while_the_input_stays_open() -> None:
    # a job whose batch takes hours, its input still open (retries may come): the
    # poller sleeps until the next look, a minute, not an eighth of the floor at a time
    now = [0.0]
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)
        now[0] += seconds
        await anyio.lowlevel.checkpoint()

    client = EndsAtLook({"b1": 4})
    async with anyio.create_task_group() as tg:
        send_in, recv_out = watch_an_old_batch(tg, client, sleep, now, "b1")
        async with recv_out:
            [ended] = await recv_out.receive()
        await send_in.aclose()
    assert ended.batch_id == "b1"
    assert client.calls == ["b1"] * 4
    assert sleeps == [60.0, 60.0, 60.0]


async def test_a_batch_submitted_while_the_poller_waits_on_an_old_one_gets_its_quick_look() -> None:
    # the poller waits a minute for an old batch's next look; a new batch arrives: it
    # is taken in at once and looked at after its quick look, not after the minute
    now = [0.0]
    sleeps: list[float] = []
    wakes: list[anyio.Event] = []

    async def sleep(seconds: float) -> None:
        # virtual time that passes only when the test says (``wakes``)
        sleeps.append(seconds)
        wake = anyio.Event()
        wakes.append(wake)
        await wake.wait()
        now[0] += seconds

    client = EndsAtLook({"old": 2, "new": 1})
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            send_in, recv_out = watch_an_old_batch(tg, client, sleep, now, "old")
            await anyio.wait_all_tasks_blocked()
            assert (client.calls, sleeps) == (["old"], [60.0])  # looked at, then a minute
            await send_in.send([SubmittedBatch(2, "new", 5, WALL_START + now[0])])
            await anyio.wait_all_tasks_blocked()
            assert sleeps == [60.0, 0.25]  # the minute cut short: the new one's quick look
            assert now[0] == 0.0
            wakes[-1].set()
            async with recv_out:
                assert [b.batch_id for b in await recv_out.receive()] == ["new"]
                await anyio.wait_all_tasks_blocked()
                assert sleeps[-1] == 59.75  # then the old one's look, when it is due
                await send_in.aclose()
                wakes[-1].set()
                assert [b.batch_id for b in await recv_out.receive()] == ["old"]
    assert client.calls == ["old", "new", "old"]
