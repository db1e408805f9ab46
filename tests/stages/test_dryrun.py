"""The dry-run stage with a fake client in virtual time (no real sleeps)."""

from __future__ import annotations

from functools import partial
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline._config import PipelineConfig
from pipeline._errors import (
    AuthenticationError,
    BadRequestError,
    DryRunAbortedError,
    NotFoundError,
    PermissionDeniedError,
)
from pipeline._pricing import estimate_cost_usd
from pipeline.api._types import Message, Usage
from pipeline.stages._items import Entry, Flush, Reject, Watermark
from pipeline.stages.dryrun import (
    DRY_RUN_THINKING_BUDGET,
    MAX_TOOL_SETS,
    DryRunMeter,
    count_tokens_body,
    dry_run,
    messages_body,
)

if TYPE_CHECKING:
    from collections.abc import Awaitable

Item = Entry | Reject | Flush
MODEL = "claude-3-haiku-20240307"


class VirtualClock:
    """A clock that only moves when someone sleeps."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        target = self.now + seconds
        await anyio.lowlevel.checkpoint()
        self.now = max(self.now, target)


class FakeClient:
    """Records every call; ``fail`` maps a prompt to the error to raise; ``gates`` map a
    prompt to an event the call waits for."""

    def __init__(self, clock: VirtualClock, tokens: int = 42) -> None:
        self.clock = clock
        self.tokens = tokens
        self.calls: list[tuple[str, dict[str, Any], float]] = []
        self.fail: dict[str, Exception] = {}
        self.gates: dict[str, anyio.Event] = {}

    async def _call(self, kind: str, params: bytes) -> int:
        body = msgspec.json.decode(params)
        self.calls.append((kind, body, self.clock()))
        prompt = body["messages"][0]["content"]
        if prompt in self.gates:
            await self.gates[prompt].wait()
        await anyio.lowlevel.checkpoint()
        if prompt in self.fail:
            raise self.fail[prompt]
        return self.tokens

    async def count_tokens(self, params: bytes) -> int:
        return await self._call("count_tokens", params)

    async def create_message(self, params: bytes) -> Message:
        tokens = await self._call("messages", params)
        return Message(
            id="msg_1", model=MODEL, content=[], usage=Usage(input_tokens=tokens, output_tokens=1)
        )


def make_entry(line: int, shape: str, **params: Any) -> Entry:
    """An entry whose prompt is its shape name (so the fake can fail a shape)."""
    body = {"model": MODEL, "max_tokens": 100, "messages": [{"role": "user", "content": shape}]}
    body.update(params)
    raw = msgspec.json.encode({"custom_id": f"{shape}-{line}", "params": body})
    return Entry(
        line,
        f"{shape}-{line}",
        raw,
        end=line * 10,
        signature=shape,
        model=MODEL,
        max_tokens=100,
        input_tokens=len(raw) // 3 + 1,
    )


def bad_request(message: str) -> BadRequestError:
    return BadRequestError(status_code=400, error_type="invalid_request_error", message=message)


async def run_stage(
    batches: list[list[Item]], client: Any, config: PipelineConfig, **kwargs: Any
) -> list[Item]:
    """Feed ``batches`` through the stage, return everything it sent."""
    clock = client.clock if isinstance(client, FakeClient) else VirtualClock()
    send_in, recv_in = anyio.create_memory_object_stream[list[Item]](100)
    send_out, recv_out = anyio.create_memory_object_stream[list[Item]](100)
    out: list[Item] = []

    async def feed() -> None:
        async with send_in:
            for batch in batches:
                await send_in.send(batch)

    async def collect() -> None:
        async with recv_out:
            async for batch in recv_out:
                # checkpoint caps are tested on their own (test_watermarks_*)
                out.extend(x for x in batch if not isinstance(x, Watermark))

    stage = partial(
        dry_run,
        recv_in,
        send_out,
        client=client,
        config=config,
        clock=clock,
        sleep=clock.sleep,
        **kwargs,
    )
    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(feed)
            tg.start_soon(collect)
            tg.start_soon(stage)
    except BaseExceptionGroup as group:
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise
    return out


async def raised(awaitable: Awaitable[object]) -> BaseException | None:
    """What ``awaitable`` raised, or None. Inside ``serve_emulator`` a failing
    ``pytest.raises`` would end up in the server's exception group: assert outside."""
    try:
        await awaitable
    except Exception as exc:
        return exc
    return None


def entries_of(items: list[Item], shape: str) -> list[Entry]:
    return [i for i in items if isinstance(i, Entry) and i.signature == shape]


async def test_new_shape_triggers_exactly_k_calls() -> None:
    client = FakeClient(VirtualClock())
    config = PipelineConfig(dry_run_samples=2, dry_run_rate=1000)
    shapes = ["A", "B", "C"]
    entries = [make_entry(n, shapes[n % 3]) for n in range(60)]
    meter = DryRunMeter()
    out = await run_stage(
        [entries[i : i + 7] for i in range(0, 60, 7)], client, config, meter=meter
    )

    assert len(client.calls) == 6
    assert sorted(c[1]["messages"][0]["content"] for c in client.calls) == [
        "A",
        "A",
        "B",
        "B",
        "C",
        "C",
    ]
    assert len(out) == 60
    assert all(isinstance(i, Entry) for i in out)
    for shape in shapes:  # per-shape order is kept
        lines = [e.line for e in entries_of(out, shape)]
        assert lines == sorted(lines)
        assert len(lines) == 20
    stats = meter.statistics()
    assert (stats.calls, stats.count_tokens_calls, stats.shapes, stats.shapes_passed) == (
        6,
        6,
        3,
        3,
    )
    assert stats.held == 0


def tool_entry(n: int) -> Entry:
    """Entry ``n`` of a tool-use evaluation: tools of its own, so a shape of its own
    (prompt ``t<n>`` lets the fake fail it)."""
    entry = make_entry(n, f"t{n}")
    entry.signature = f"{MODEL}|model,max_tokens,messages,tools|lookup_{n}|str"
    return entry


async def test_a_job_whose_requests_each_bring_their_own_tools_is_not_held_to_the_call_rate() -> (
    None
):
    client = FakeClient(VirtualClock())
    meter = DryRunMeter()
    entries = [tool_entry(n) for n in range(1, 201)]
    out = await run_stage([entries], client, PipelineConfig(dry_run_rate=5), meter=meter)
    assert sorted(e.line for e in out if isinstance(e, Entry)) == list(range(1, 201))
    # MAX_TOOL_SETS tool sets sampled apart, then one shared sample for all the rest
    assert len(client.calls) == MAX_TOOL_SETS + 1
    assert [c[1]["messages"][0]["content"] for c in client.calls][-1] == f"t{MAX_TOOL_SETS + 1}"
    assert client.clock() < 5  # seconds of the dry run's rate limit, not 200 / 5 = 40


async def test_a_bad_tool_set_in_the_shared_shape_is_rejected_alone() -> None:
    client = FakeClient(VirtualClock())
    shared_sample = MAX_TOOL_SETS + 1
    client.fail[f"t{shared_sample}"] = bad_request("tools.0.input_schema: not a schema")
    out = await run_stage([[tool_entry(n) for n in range(1, 61)]], client, PipelineConfig())
    [reject] = [r for r in out if isinstance(r, Reject)]
    assert (reject.line, reject.error.message) == (
        shared_sample,
        "tools.0.input_schema: not a schema",
    )
    assert len([e for e in out if isinstance(e, Entry)]) == 59  # the others go on
    assert len(client.calls) == MAX_TOOL_SETS + 1


async def test_a_failure_of_every_tool_set_still_rejects_the_whole_shape_without_more_calls() -> (
    None
):
    client = FakeClient(VirtualClock())
    for n in range(1, 61):  # e.g. a model this account may not use
        client.fail[f"t{n}"] = NotFoundError(
            status_code=404, error_type="not_found_error", message="model: claude-x"
        )
    out = await run_stage([[tool_entry(n) for n in range(1, 61)]], client, PipelineConfig())
    assert all(isinstance(r, Reject) for r in out)
    assert len(out) == 60
    assert len(client.calls) == MAX_TOOL_SETS + 1
    pointed = [r for r in out if "dry run of this request's shape failed" in r.error.message]
    assert len(pointed) == 60 - MAX_TOOL_SETS - 1


async def test_measured_tokens_price_the_samples_and_calibrate_the_rest() -> None:
    client = FakeClient(VirtualClock(), tokens=10)
    entries = [make_entry(n, "A") for n in range(3)]
    approx = entries[0].input_tokens
    out = await run_stage([entries], client, PipelineConfig(dry_run_samples=1))
    first, *rest = entries_of(out, "A")
    assert first.input_tokens == 10
    assert first.cost_usd == pytest.approx(estimate_cost_usd(MODEL, 10, 100))
    for entry in rest:  # same shape and length: scaled by measured / approximated
        assert entry.input_tokens == (approx * 10) // approx
        assert entry.cost_usd == pytest.approx(estimate_cost_usd(MODEL, 10, 100))


async def test_reject_shape_rejects_the_rest_without_further_calls() -> None:
    client = FakeClient(VirtualClock())
    client.fail["B"] = bad_request("messages.0.content: bad thing")
    entries = [make_entry(n, "AB"[n % 2]) for n in range(20)]
    meter = DryRunMeter()
    out = await run_stage([entries], client, PipelineConfig(), meter=meter)

    assert [c[1]["messages"][0]["content"] for c in client.calls] == ["A", "B"]
    assert len(entries_of(out, "A")) == 10
    rejects = [i for i in out if isinstance(i, Reject)]
    assert len(rejects) == 10
    sample = next(r for r in rejects if r.line == 1)
    assert (sample.custom_id, sample.error.type) == ("B-1", "invalid_request_error")
    assert sample.error.message == "messages.0.content: bad thing"
    assert sample.end == 10
    pointer = next(r for r in rejects if r.line == 3)
    assert pointer.custom_id == "B-3"
    assert pointer.error.message == (
        "dry run of this request's shape failed on line 1 (custom_id 'B-1'): "
        "messages.0.content: bad thing"
    )
    stats = meter.statistics()
    assert (stats.shapes_failed, stats.samples_failed, stats.shape_rejects) == (1, 1, 9)


async def test_reject_shape_skips_pending_samples_after_a_failure() -> None:
    client = FakeClient(VirtualClock())
    client.fail["B"] = bad_request("nope")
    entries = [make_entry(n, "B") for n in range(5)]
    out = await run_stage([entries], client, PipelineConfig(dry_run_samples=3, dry_run_rate=1))
    assert len(client.calls) == 1
    assert [type(i) for i in out] == [Reject] * 5
    assert [i.line for i in out] == [0, 1, 2, 3, 4]


async def test_continue_policy_lets_the_shape_through() -> None:
    client = FakeClient(VirtualClock())
    client.fail["B"] = bad_request("nope")
    entries = [make_entry(n, "B") for n in range(5)]
    out = await run_stage([entries], client, PipelineConfig(dry_run_policy="continue"))
    assert len(client.calls) == 1
    assert isinstance(out[0], Reject)
    assert out[0].error.message == "nope"
    assert [i.line for i in out[1:] if isinstance(i, Entry)] == [1, 2, 3, 4]


async def test_abort_policy_raises_before_any_entry_of_the_shape_passes() -> None:
    client = FakeClient(VirtualClock())
    client.fail["B"] = bad_request("nope")
    gate = client.gates["B"] = anyio.Event()
    gate.set()
    send_in, recv_in = anyio.create_memory_object_stream[list[Item]](10)
    send_out, recv_out = anyio.create_memory_object_stream[list[Item]](10)
    await send_in.send([make_entry(0, "A"), make_entry(1, "B"), make_entry(2, "B")])
    await send_in.aclose()
    with pytest.raises(DryRunAbortedError) as info:
        await dry_run(
            recv_in,
            send_out,
            client=client,
            config=PipelineConfig(dry_run_policy="abort"),
            clock=client.clock,
            sleep=client.clock.sleep,
        )
    assert "line 1 (custom_id 'B-1')" in str(info.value)
    assert "invalid_request_error: nope" in str(info.value)
    passed: list[Item] = []  # what left before the stop
    with recv_out:
        async for batch in recv_out:
            passed.extend(batch)
    assert not entries_of(passed, "B")


async def test_calls_never_exceed_the_rate() -> None:
    client = FakeClient(VirtualClock())
    entries = [make_entry(n, f"S{n}") for n in range(10)]
    meter = DryRunMeter()
    await run_stage([entries], client, PipelineConfig(dry_run_rate=2.0), meter=meter)
    times = [t for _, _, t in client.calls]
    assert len(times) == 10
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    assert min(gaps) >= 0.5 - 1e-9
    assert times[-1] == pytest.approx(4.5)  # and no slower than needed
    assert meter.statistics().calls == 10


async def test_known_shapes_flow_while_a_new_shape_is_checked() -> None:
    client = FakeClient(VirtualClock())
    gate = client.gates["B"] = anyio.Event()
    send_in, recv_in = anyio.create_memory_object_stream[list[Item]](10)
    send_out, recv_out = anyio.create_memory_object_stream[list[Item]](10)
    config = PipelineConfig(dry_run_rate=1000)
    async with anyio.create_task_group() as tg, send_in, recv_out:
        tg.start_soon(
            partial(
                dry_run,
                recv_in,
                send_out,
                client=client,
                config=config,
                clock=client.clock,
                sleep=client.clock.sleep,
            )
        )
        await send_in.send([make_entry(0, "A")])
        assert [i.line for i in unmarked(await recv_out.receive())] == [0]  # A verified
        await send_in.send([make_entry(1, "B"), make_entry(2, "B")])
        await send_in.send([make_entry(3, "A"), Flush(end=30)])
        got = unmarked(await recv_out.receive())  # while B's check hangs on the gate
        assert [type(i) for i in got] == [Entry, Flush]
        assert got[0].line == 3
        assert not gate.is_set()
        assert len(client.calls) == 2
        gate.set()
        assert [i.line for i in unmarked(await recv_out.receive())] == [1, 2]
        await send_in.aclose()
        with pytest.raises(anyio.EndOfStream):
            await recv_out.receive()


def unmarked(items: list[Item]) -> list[Item]:
    return [i for i in items if not isinstance(i, Watermark)]


async def test_what_overtakes_a_held_entry_carries_a_checkpoint_cap() -> None:
    """Entries of a checked shape overtake one being checked; a ``Watermark`` keeps
    the checkpoint from passing the held entry until it is released."""
    client = FakeClient(VirtualClock())
    gate = client.gates["B"] = anyio.Event()
    send_in, recv_in = anyio.create_memory_object_stream[list[Item]](10)
    send_out, recv_out = anyio.create_memory_object_stream[list[Item]](10)
    config = PipelineConfig(dry_run_rate=1000)

    def at(line: int, shape: str) -> Entry:
        entry = make_entry(line, shape)
        entry.offset = (line - 1) * 10
        return entry

    async with anyio.create_task_group() as tg, send_in, recv_out:
        tg.start_soon(
            partial(
                dry_run,
                recv_in,
                send_out,
                client=client,
                config=config,
                clock=client.clock,
                sleep=client.clock.sleep,
            )
        )
        await send_in.send([at(1, "A")])
        assert unmarked(await recv_out.receive())[0].line == 1
        await send_in.send([at(2, "B"), at(3, "A")])
        got = await recv_out.receive()
        assert got[0] == Watermark(end=10, line=1)  # the start of held line 2
        assert [i.line for i in unmarked(got)] == [3]
        gate.set()
        got = await recv_out.receive()
        # nothing held: the cap is lifted, after the entry it lets through (a stage
        # that cuts the list short keeps the lower cap in force)
        assert got[-1] == Watermark()
        assert [i.line for i in unmarked(got)] == [2]
        await send_in.aclose()


async def test_held_entries_are_bounded_backpressure() -> None:
    client = FakeClient(VirtualClock())
    gate = client.gates["B"] = anyio.Event()
    send_in, recv_in = anyio.create_memory_object_stream[list[Item]](0)
    send_out, recv_out = anyio.create_memory_object_stream[list[Item]](100)
    meter = DryRunMeter()
    fed = 0

    async def feed() -> None:
        nonlocal fed
        async with send_in:
            for n in range(20):
                await send_in.send([make_entry(n, "B")])
                fed += 1

    async with anyio.create_task_group() as tg, recv_out:
        tg.start_soon(
            partial(
                dry_run,
                recv_in,
                send_out,
                client=client,
                config=PipelineConfig(),
                clock=client.clock,
                sleep=client.clock.sleep,
                max_held=3,
                meter=meter,
            )
        )
        tg.start_soon(feed)
        for _ in range(50):
            await anyio.lowlevel.checkpoint()
        assert meter.statistics().held == 3
        assert fed <= 4  # the stage stopped reading: the source is blocked
        gate.set()
        lines = [i.line async for batch in recv_out for i in batch]
    assert lines == list(range(20))
    assert fed == 20


async def test_final_flush_waits_for_held_shapes() -> None:
    client = FakeClient(VirtualClock())
    out = await run_stage(
        [[make_entry(0, "A"), make_entry(1, "A")], [Flush(end=20, final=True)]],
        client,
        PipelineConfig(dry_run_samples=5),
    )
    assert [type(i) for i in out] == [Entry, Entry, Flush]
    assert len(client.calls) == 2  # fewer entries than samples: all of them checked


async def test_fatal_errors_fail_the_stage() -> None:
    client = FakeClient(VirtualClock())
    client.fail["A"] = AuthenticationError(
        status_code=401, error_type="authentication_error", message="bad key"
    )
    with pytest.raises(AuthenticationError) as info:
        await run_stage([[make_entry(0, "A")]], client, PipelineConfig())
    assert "POST /v1/messages/count_tokens" in str(info.value)
    assert "--api-key-env" in str(info.value)


@pytest.mark.parametrize("mode", ["count-tokens", "messages"])
async def test_a_wrong_base_url_fails_the_stage_instead_of_rejecting_everything(
    tmp_path: Any, mode: str
) -> None:
    """Over loopback: a base URL with a path under it makes every dry-run call a 404
    for a missing endpoint, which says nothing about the requests."""
    from pipeline.api import Client
    from pipeline.testing import serve_emulator

    entries = [make_entry(n, "A") for n in range(3)]
    async with (
        serve_emulator(data_dir=tmp_path) as emu,
        Client(api_key="sk-test", base_url=emu.url + "/nope") as client,
    ):
        error = await raised(run_stage([entries], client, PipelineConfig(dry_run=mode)))
    assert isinstance(error, NotFoundError)
    endpoint = "/v1/messages/count_tokens" if mode == "count-tokens" else "/v1/messages"
    assert f"the dry run's POST {endpoint} call failed" in str(error)
    assert "--base-url" in str(error)
    assert error.status_code == 404


async def test_a_refused_key_fails_the_stage_without_showing_the_key(tmp_path: Any) -> None:
    from pipeline.api import Client
    from pipeline.emulator._config import EmulatorConfig
    from pipeline.testing import serve_emulator

    key = "sk-ant-secret-123"
    emulator = EmulatorConfig(workspaces={key: "team"})
    async with (
        serve_emulator(emulator, data_dir=tmp_path) as emu,
        Client(
            api_key=key, base_url=emu.url, extra_headers={"anthropic-workspace-id": "other"}
        ) as client,
    ):
        error = await raised(run_stage([[make_entry(0, "A")]], client, PipelineConfig()))
    assert isinstance(error, PermissionDeniedError)
    assert "--api-key-env" in str(error)
    assert key not in str(error)
    assert key not in repr(error.args)


async def test_missing_key_fails_the_stage_with_a_hint(tmp_path: Any) -> None:
    from pipeline.api import Client
    from pipeline.testing import serve_emulator

    async with (
        serve_emulator(data_dir=tmp_path) as emu,
        Client(api_key=None, base_url=emu.url) as client,
    ):
        error = await raised(run_stage([[make_entry(0, "A")]], client, PipelineConfig()))
    assert isinstance(error, AuthenticationError)
    assert "the dry run's POST /v1/messages/count_tokens call failed" in str(error)
    assert "--api-key-env" in str(error)


async def test_an_unknown_model_404_is_a_verdict_on_the_request() -> None:
    """The service answers an unknown model with 404 ``model: ...``: that condemns the
    requests of that shape, not the job."""
    client = FakeClient(VirtualClock())
    client.fail["B"] = NotFoundError(
        status_code=404, error_type="not_found_error", message="model: claude-nope"
    )
    entries = [make_entry(n, "AB"[n % 2]) for n in range(6)]
    out = await run_stage([entries], client, PipelineConfig())
    assert [e.line for e in entries_of(out, "A")] == [0, 2, 4]
    rejects = [i for i in out if isinstance(i, Reject)]
    assert [r.line for r in rejects] == [1, 3, 5]
    assert (rejects[0].error.type, rejects[0].error.message) == (
        "not_found_error",
        "model: claude-nope",
    )


async def test_a_404_not_naming_a_field_fails_the_stage() -> None:
    client = FakeClient(VirtualClock())
    client.fail["A"] = NotFoundError(
        status_code=404, error_type="not_found_error", message="Not Found"
    )
    with pytest.raises(NotFoundError, match="--base-url"):
        await run_stage([[make_entry(0, "A")]], client, PipelineConfig(dry_run_policy="continue"))


async def test_off_passes_through_without_calls() -> None:
    client = FakeClient(VirtualClock())
    batches: list[list[Item]] = [[make_entry(0, "A"), Flush()], [make_entry(1, "B")]]
    out = await run_stage(batches, client, PipelineConfig(dry_run="off"))
    assert out == batches[0] + batches[1]
    assert client.calls == []


async def test_messages_mode_sends_own_params_with_tiny_max_tokens() -> None:
    client = FakeClient(VirtualClock())
    entry = make_entry(0, "A", temperature=0.3, system="s")
    meter = DryRunMeter()
    await run_stage([[entry]], client, PipelineConfig(dry_run="messages"), meter=meter)
    [(kind, body, _)] = client.calls
    assert kind == "messages"
    assert body == {
        "model": MODEL,
        "max_tokens": 1,
        "messages": [{"role": "user", "content": "A"}],
        "temperature": 0.3,
        "system": "s",
    }
    assert meter.statistics().messages_calls == 1


def test_bodies() -> None:
    raw = make_entry(
        0,
        "A",
        temperature=0.3,
        metadata={"user_id": "u"},
        system="s",
        thinking={"type": "enabled", "budget_tokens": 2000},
        max_tokens=4000,
    ).raw
    assert msgspec.json.decode(count_tokens_body(raw)) == {
        "model": MODEL,
        "messages": [{"role": "user", "content": "A"}],
        "system": "s",
        "thinking": {"type": "enabled", "budget_tokens": 2000},
    }
    body = msgspec.json.decode(messages_body(raw))
    assert (body["max_tokens"], body["thinking"]["budget_tokens"]) == (1025, 1024)


def test_a_thinking_probe_thinks_at_the_minimum_budget_and_keeps_the_rest() -> None:
    """A 32k thinking budget is not paid for by a probe: budget 1024, max_tokens 1025."""
    thinking = {"type": "enabled", "budget_tokens": 32000, "display": "omitted"}
    raw = make_entry(0, "A", thinking=thinking, max_tokens=64000, system="s", stream=False).raw
    assert msgspec.json.decode(messages_body(raw)) == {
        "model": MODEL,
        "max_tokens": 1025,
        "messages": [{"role": "user", "content": "A"}],
        "thinking": {
            "type": "enabled",
            "budget_tokens": DRY_RUN_THINKING_BUDGET,
            "display": "omitted",
        },
        "system": "s",
    }
    # a budget under the minimum is sent as it is, for the service to refuse
    small = make_entry(0, "A", thinking={"type": "enabled", "budget_tokens": 500}).raw
    assert msgspec.json.decode(messages_body(small))["thinking"]["budget_tokens"] == 500
    assert msgspec.json.decode(messages_body(small))["max_tokens"] == 501
    adaptive = make_entry(0, "A", thinking={"type": "adaptive"}).raw
    assert msgspec.json.decode(messages_body(adaptive))["max_tokens"] == 1


async def test_messages_mode_sends_the_minimum_thinking_budget() -> None:
    client = FakeClient(VirtualClock())
    thinking = {"type": "enabled", "budget_tokens": 32000}
    entry = make_entry(0, "A", thinking=thinking, max_tokens=64000)
    await run_stage([[entry]], client, PipelineConfig(dry_run="messages"))
    [(_, body, _)] = client.calls
    assert (body["max_tokens"], body["thinking"]) == (
        1025,
        {"type": "enabled", "budget_tokens": 1024},
    )


async def test_count_tokens_mode_catches_what_the_emulator_rejects(tmp_path: Any) -> None:
    """Against the real emulator over loopback: a model this deployment does not serve
    passes local validation (models=None) but fails its count_tokens sample."""
    from pipeline.api import Client
    from pipeline.emulator._config import EmulatorConfig
    from pipeline.testing import serve_emulator

    emulator = EmulatorConfig(models=frozenset({MODEL}))
    good = [make_entry(n, "A") for n in range(3)]
    bad = []
    for n in range(3, 6):
        entry = make_entry(n, "B", model="claude-3-opus-20240229")
        entry.model = "claude-3-opus-20240229"
        bad.append(entry)
    meter = DryRunMeter()
    async with (
        serve_emulator(emulator, data_dir=tmp_path) as emu,
        Client(api_key="sk-test", base_url=emu.url) as client,
    ):
        out = await run_stage([good + bad], client, PipelineConfig(dry_run_rate=1000), meter=meter)
    assert [e.line for e in entries_of(out, "A")] == [0, 1, 2]
    assert entries_of(out, "A")[0].input_tokens > 0
    rejects = [i for i in out if isinstance(i, Reject)]
    assert [r.line for r in rejects] == [3, 4, 5]
    # the model is not in the deployment's GET /v1/models: not found, with no sample call
    assert rejects[0].error.type == "not_found_error"
    assert "claude-3-opus-20240229" in rejects[0].error.message
    assert rejects[1].error.message.startswith("dry run of this request's shape failed on line 3")
    assert meter.statistics().count_tokens_calls == 1


async def test_downstream_closing_stops_the_stage_cleanly() -> None:
    client = FakeClient(VirtualClock())
    send_in, recv_in = anyio.create_memory_object_stream[list[Item]](10)
    send_out, recv_out = anyio.create_memory_object_stream[list[Item]](10)
    recv_out.close()  # the spend guard stopped reading
    await send_in.send([make_entry(0, "A"), make_entry(1, "A")])
    await dry_run(
        recv_in,
        send_out,
        client=client,
        config=PipelineConfig(),
        clock=client.clock,
        sleep=client.clock.sleep,
    )
    with pytest.raises(anyio.BrokenResourceError):  # upstream sees it closed
        await send_in.send([make_entry(2, "A")])
    send_in.close()


async def test_a_job_with_a_wrong_base_url_fails_instead_of_finishing(tmp_path: Any) -> None:
    """End to end over loopback: the job stops at the dry run with a reason, and no
    request is written off as a reject."""
    from pipeline._errors import StageError
    from pipeline._pipeline import Pipeline
    from pipeline.api import Client
    from pipeline.testing import serve_emulator

    source = tmp_path / "in.jsonl"
    source.write_bytes(b"".join(make_entry(n, f"q{n}").raw + b"\n" for n in range(5)))
    async with (
        serve_emulator(data_dir=tmp_path / "emu") as emu,
        Client(api_key="sk-test", base_url=emu.url + "/nope") as client,
    ):
        pipeline = Pipeline(source, tmp_path / "out.jsonl", config=PipelineConfig(), client=client)
        with anyio.fail_after(30):
            error = await raised(pipeline.run())
    assert isinstance(error, StageError), error  # not a "finished" job
    assert error.stage == "dry_run"
    assert isinstance(error.__cause__, NotFoundError)
    assert "--base-url" in str(error)
    rejects = tmp_path / "out.rejects.jsonl"
    assert not rejects.exists() or rejects.read_bytes() == b""


async def test_a_later_copy_of_a_held_custom_id_never_overtakes_it() -> None:
    """First line wins a duplicate custom_id: line 1 waits for its shape's check,
    line 2 carries the same custom_id in a shape already checked. Line 2 waits behind
    line 1 and leaves right after it (so the ledger sees line 1 first and rejects
    line 2 as its duplicate), while other entries of the checked shape flow past."""
    client = FakeClient(VirtualClock())
    gate = client.gates["B"] = anyio.Event()
    send_in, recv_in = anyio.create_memory_object_stream[list[Item]](10)
    send_out, recv_out = anyio.create_memory_object_stream[list[Item]](10)
    meter = DryRunMeter()
    stage = partial(
        dry_run,
        recv_in,
        send_out,
        client=client,
        config=PipelineConfig(dry_run_rate=1000),
        clock=client.clock,
        sleep=client.clock.sleep,
        meter=meter,
    )
    first, copy, third = make_entry(1, "B"), make_entry(2, "A"), make_entry(4, "C")
    first.custom_id = copy.custom_id = third.custom_id = "dup"
    async with anyio.create_task_group() as tg, send_in, recv_out:
        tg.start_soon(stage)
        await send_in.send([make_entry(0, "A")])
        assert [i.line for i in unmarked(await recv_out.receive())] == [0]  # A checked
        await send_in.send([first, copy, make_entry(3, "A"), third])
        got = unmarked(await recv_out.receive())  # while B's check hangs on the gate
        assert [i.line for i in got] == [3]
        assert meter.statistics().held == 3  # line 1, and lines 2 and 4 behind it
        gate.set()
        # line 4's shape C is new: it is checked in turn, still behind line 2
        released = unmarked(await recv_out.receive())
        released += unmarked(await recv_out.receive())
        assert [(i.line, i.custom_id) for i in released] == [(1, "dup"), (2, "dup"), (4, "dup")]
        await send_in.aclose()
        with pytest.raises(anyio.EndOfStream):
            await recv_out.receive()
    assert meter.statistics().held == 0
