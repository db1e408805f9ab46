"""Composing stages: request builders, result processors, user stages on records
and requests, the type check, a stage that raises; all through the public API,
against the emulator on loopback."""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline import Client, Pipeline, StageError, UsageError
from pipeline.stages import (
    CHUNKER,
    POLLER,
    RESULTS,
    SUBMITTER,
    VALIDATE,
    Entry,
    JoinedResult,
    Record,
    Routed,
    build_requests,
    on_records,
    on_requests,
    process_results,
    submitter,
)
from pipeline.testing import EmulatorConfig, reply_text, serve_emulator
from tests._helpers import FAST as RUNNER_FAST
from tests._helpers import MODEL

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

    from anyio.abc import ObjectReceiveStream, ObjectSendStream

FAST = msgspec.structs.replace(RUNNER_FAST, max_attempts=6)


@dataclasses.dataclass(frozen=True)
class Product:
    sku: str
    name: str


def products(n: int) -> list[Product]:
    return [Product(f"sku-{i:04d}", f"thing {i}") for i in range(n)]


def prompt(p: Product) -> str:
    return f"Describe {p.name} in one line."


def build(p: Product) -> dict[str, Any]:
    return {
        "custom_id": p.sku,
        "params": {
            "model": MODEL,
            "max_tokens": 32,
            "messages": [{"role": "user", "content": prompt(p)}],
        },
    }


def describe(joined: JoinedResult) -> dict[str, Any]:
    return {
        "sku": joined.record.sku,
        "prompt": joined.request["params"]["messages"][0]["content"],
        "text": joined.text,
    }


def outputs(path: Path) -> list[dict[str, Any]]:
    return [msgspec.json.decode(line) for line in path.read_bytes().splitlines()]


async def run(tmp_path: Path, url: str, source: Any, **kwargs: Any) -> Any:
    async with Client(api_key="test-key", base_url=url) as client:
        pipeline = Pipeline(
            source,
            kwargs.pop("output", tmp_path / "out.jsonl"),
            config=kwargs.pop("config", FAST),
            client=client,
            **kwargs,
        )
        with anyio.fail_after(30):
            return await pipeline.run()


async def test_builder_and_processor_join_each_result_with_its_request_and_record(
    tmp_path: Path,
) -> None:
    items = products(60)
    calls: list[str] = []

    def counted(p: Product) -> dict[str, Any]:
        calls.append(p.sku)
        return build(p)

    emu_config = EmulatorConfig(batch_seconds=0.0, request_error_rate=0.2, seed=5)
    async with serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu:
        stats = await run(
            tmp_path,
            emu.url,
            items,
            stages=[build_requests(counted), process_results(describe)],
        )
        submitted = emu.submissions()
    got = outputs(tmp_path / "out.jsonl")
    assert sorted(o["sku"] for o in got) == [p.sku for p in items]  # each once
    by_sku = {p.sku: p for p in items}
    for o in got:  # the answer to what the builder built, joined with its record
        assert o["prompt"] == prompt(by_sku[o["sku"]])
        assert o["text"] == " ".join(reply_text(o["prompt"]))
    assert max(submitted.values()) > 1  # retries happened, from the ledger's bytes:
    assert sorted(calls) == [p.sku for p in items]  # the builder ran once per record
    assert stats.finished
    assert stats.written == 60


async def test_async_builder_from_an_async_iterable_fans_out_and_skips(tmp_path: Path) -> None:
    async def records() -> AsyncIterator[Product]:
        for p in products(20):
            yield p

    async def build_two(p: Product) -> list[dict[str, Any]] | None:
        if p.sku.endswith("3"):
            return None  # skipped: filtered
        return [build(p), build(dataclasses.replace(p, sku=p.sku + "-b"))]

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        stats = await run(tmp_path, emu.url, records(), stages=[build_requests(build_two)])
    ids = sorted(
        msgspec.json.decode(line)["custom_id"]
        for line in (tmp_path / "out.jsonl").read_bytes().splitlines()
    )
    kept = [p.sku for p in products(20) if not p.sku.endswith("3")]
    assert ids == sorted(kept + [k + "-b" for k in kept])
    assert stats.filtered == 2
    assert stats.total == stats.written == 36  # 18 records kept, two requests each
    assert stats.finished


async def test_a_rewrite_after_validate_is_what_is_sent_and_retried(tmp_path: Path) -> None:
    def shorter(entry: Entry) -> dict[str, Any]:
        request = msgspec.json.decode(entry.raw)
        request["params"]["max_tokens"] = 7
        request["params"]["messages"][0]["content"] = "rewritten " + entry.custom_id
        return dict(request)

    seen: list[Entry] = []

    def spy(entry: Entry) -> Entry:
        seen.append(entry)
        return entry

    entries = [build(p) for p in products(30)]
    emu_config = EmulatorConfig(batch_seconds=0.0, request_error_rate=0.3, seed=9)
    async with serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu:
        await run(tmp_path, emu.url, entries, stages=[on_requests(shorter), on_requests(spy)])
        submitted = emu.submissions()
    results = [msgspec.json.decode(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert max(submitted.values()) > 1
    for r in results:  # every answer, retried or not, is to the rewritten request
        words = " ".join(b["text"] for b in r["result"]["message"]["content"]).split()
        assert words == reply_text("rewritten " + r["custom_id"])[:7]  # max_tokens 7
    # the copied fields follow the new bytes, not the line read
    assert {e.max_tokens for e in seen} == {7}


async def test_filter_and_reordering_stage_on_records(tmp_path: Path) -> None:
    def odd(p: Product) -> Product | None:
        return p if int(p.sku[-1]) % 2 else None

    async def reverse_tens(
        receive: ObjectReceiveStream[Record], send: ObjectSendStream[Record], /
    ) -> None:
        held: list[Record] = []
        async with receive, send:
            async for record in receive:
                held.append(record)
                if len(held) == 10:
                    for r in reversed(held):
                        await send.send(r)
                    held.clear()
            for r in reversed(held):
                await send.send(r)

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        stats = await run(
            tmp_path,
            emu.url,
            products(40),
            stages=[on_records(odd), on_records(reverse_tens), build_requests(build)],
        )
    ids = sorted(
        msgspec.json.decode(line)["custom_id"]
        for line in (tmp_path / "out.jsonl").read_bytes().splitlines()
    )
    assert ids == [p.sku for p in products(40) if int(p.sku[-1]) % 2]
    assert stats.filtered == 20
    assert stats.total == 20


async def test_a_stage_that_raises_stops_the_job_naming_it_and_the_job_resumes(
    tmp_path: Path,
) -> None:
    broken = {"on": True}

    def flaky(p: Product) -> Product:
        if broken["on"] and p.sku == "sku-0025":
            raise ValueError("bad record")
        return p

    stages = [on_records(flaky, name="enrich"), build_requests(build)]
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        with pytest.raises(StageError) as info:
            await run(tmp_path, emu.url, products(50), stages=stages, state=tmp_path / "s")
        assert info.value.stage == "enrich"
        assert isinstance(info.value.__cause__, ValueError)
        broken["on"] = False
        stats = await run(tmp_path, emu.url, products(50), stages=stages, state=tmp_path / "s")
        submitted = emu.submissions()
    ids = [
        msgspec.json.decode(line)["custom_id"]
        for line in (tmp_path / "out.jsonl").read_bytes().splitlines()
    ]
    assert sorted(ids) == [p.sku for p in products(50)]  # each once across both runs
    assert set(submitted.values()) == {1}
    assert stats.finished


@pytest.mark.parametrize(
    ("stages", "message"),
    [
        (
            [VALIDATE, on_records(lambda r: r, name="tidy"), CHUNKER, SUBMITTER, POLLER, RESULTS],
            "stage 'tidy' takes records, but the stage before it, 'validate', gives requests",
        ),
        (
            [on_requests(lambda e: e, name="late"), VALIDATE, CHUNKER, SUBMITTER, POLLER, RESULTS],
            "stage 'late' takes requests, but the stage before it, 'source', gives request lines",
        ),
        (
            [on_records(lambda r: r, name="tidy")],
            "stage 'validate' takes request lines, but the stage before it, 'tidy', gives records",
        ),
        (
            [VALIDATE, CHUNKER, SUBMITTER, RESULTS, POLLER],
            "chunker, submitter, poller and results go together",
        ),
        (
            [process_results(lambda j: j, name="a"), process_results(lambda j: j, name="b")],
            "stage 'b' takes results, but the stage before it, 'a', gives outputs",
        ),
    ],
)
def test_a_type_mismatch_is_refused_before_anything_runs(
    tmp_path: Path, stages: list[Any], message: str
) -> None:
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Pipeline(products(3), tmp_path / "out.jsonl", stages=stages)
    assert not (tmp_path / "out.jsonl.state").exists()


async def test_a_full_list_leaves_out_optional_stages_and_inserts_a_filter(
    tmp_path: Path,
) -> None:
    def no_sevens(entry: Entry) -> Entry | None:
        return None if entry.custom_id.endswith("7") else entry

    lines = b"".join(msgspec.json.encode(build(p)) + b"\n" for p in products(30))
    (tmp_path / "in.jsonl").write_bytes(lines)
    stages = [VALIDATE, on_requests(no_sevens), CHUNKER, SUBMITTER, POLLER, RESULTS]
    config = msgspec.structs.replace(FAST, dry_run="sample", budget_usd=100.0)
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        stats = await run(tmp_path, emu.url, tmp_path / "in.jsonl", stages=stages, config=config)
    ids = sorted(
        msgspec.json.decode(line)["custom_id"]
        for line in (tmp_path / "out.jsonl").read_bytes().splitlines()
    )
    assert ids == [p.sku for p in products(30) if not p.sku.endswith("7")]
    assert stats.dry_run_calls == 0  # left out, whatever the configuration says
    assert stats.filtered == 3


async def test_a_standard_stage_replaced_by_another_does_its_part(tmp_path: Path) -> None:
    chunks: list[int] = []

    async def gateway_submitter(receive: Any, send: Any, /, **options: Any) -> None:
        async def counted() -> AsyncIterator[Any]:
            async with receive:
                async for chunk in receive:
                    chunks.append(len(chunk.entries))
                    yield chunk

        inner_send, inner_receive = anyio.create_memory_object_stream[Any](1)
        async with anyio.create_task_group() as tg:

            async def pump() -> None:
                async with inner_send:
                    async for chunk in counted():
                        await inner_send.send(chunk)

            tg.start_soon(pump)
            await submitter(inner_receive, send, **options)

    stages = [
        VALIDATE,
        CHUNKER,
        SUBMITTER.replaced_by(gateway_submitter),
        POLLER,
        RESULTS,
    ]
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        stats = await run(tmp_path, emu.url, [build(p) for p in products(25)], stages=stages)
    assert sum(chunks) == 25
    assert stats.written == 25


def test_two_stages_of_one_name_are_refused(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unique"):
        Pipeline(
            products(3),
            tmp_path / "out.jsonl",
            stages=[on_records(lambda r: r, name="x"), on_records(lambda r: r, name="x")],
        )


async def test_a_router_sends_some_outputs_to_a_second_sink(tmp_path: Path) -> None:
    def route(joined: JoinedResult) -> Any:
        out = {"sku": joined.record.sku}
        return Routed("odd", out) if int(joined.record.sku[-1]) % 2 else out

    stages = [
        build_requests(build),
        process_results(route, routes={"odd": tmp_path / "odd.jsonl"}),
    ]
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        await run(tmp_path, emu.url, products(30), stages=stages)
    even = sorted(o["sku"] for o in outputs(tmp_path / "out.jsonl"))
    odd = sorted(o["sku"] for o in outputs(tmp_path / "odd.jsonl"))
    assert even == [p.sku for p in products(30) if int(p.sku[-1]) % 2 == 0]
    assert odd == [p.sku for p in products(30) if int(p.sku[-1]) % 2]
    with pytest.raises(UsageError, match="route 'odd' file"):  # a new job keeps it
        await run(
            tmp_path,
            "http://127.0.0.1:9",  # never contacted
            products(30),
            stages=stages,
            output=tmp_path / "other.jsonl",
        )


async def test_a_general_builder_holds_records_and_fans_out(tmp_path: Path) -> None:
    async def pairs(receive: ObjectReceiveStream[Record], send: ObjectSendStream[Any], /) -> None:
        held: Record | None = None
        async with receive, send:
            async for record in receive:
                if held is None:
                    held = record
                    continue
                for r in (record, held):  # the later one first
                    await send.send(r.request(build(r.value)))
                    await send.send(
                        r.request(build(dataclasses.replace(r.value, sku=r.value.sku + "-x")))
                    )
                held = None
            if held is not None:
                await send.send(held.request(build(held.value)))

    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        stats = await run(tmp_path, emu.url, products(21), stages=[build_requests(pairs)])
    ids = sorted(o["custom_id"] for o in outputs(tmp_path / "out.jsonl"))
    skus = [p.sku for p in products(21)]
    assert ids == sorted(skus + [s + "-x" for s in skus[:20]])
    assert stats.finished


async def test_a_general_stage_that_fails_while_holding_loses_nothing(tmp_path: Path) -> None:
    failing = {"on": True}

    async def hold_fives(
        receive: ObjectReceiveStream[Entry], send: ObjectSendStream[Entry], /
    ) -> None:
        held: list[Entry] = []
        seen = 0
        async with receive, send:
            async for entry in receive:
                seen += 1
                if failing["on"] and seen == 47:
                    raise RuntimeError("gateway down")
                if entry.custom_id.endswith("5"):
                    held.append(entry)  # sent at the end, after everything else
                else:
                    await send.send(entry)
            for entry in held:
                await send.send(entry)

    entries = [build(p) for p in products(60)]
    stages = [on_requests(hold_fives)]
    async with serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "e") as emu:
        with pytest.raises(StageError, match="hold_fives"):
            await run(tmp_path, emu.url, entries, stages=stages, state=tmp_path / "s")
        failing["on"] = False
        await run(tmp_path, emu.url, entries, stages=stages, state=tmp_path / "s")
        submitted = emu.submissions()
    ids = sorted(o["custom_id"] for o in outputs(tmp_path / "out.jsonl"))
    assert ids == [p.sku for p in products(60)]
    assert set(submitted.values()) == {1}
