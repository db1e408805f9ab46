"""An iterable entry msgspec cannot encode is a reject of its own line, never the
end of the job; a line that is JSON but not an object is typed as a bad entry."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio
import msgspec
import pytest

from pipeline._config import PipelineConfig
from pipeline._pipeline import Pipeline
from pipeline.api import Client
from pipeline.stages._items import Entry, RawLine, Reject
from pipeline.stages.source import UNENCODABLE_PREFIX, entry_line, iterable_source
from pipeline.stages.validate import Validator
from pipeline.testing import EmulatorConfig, serve_emulator

if TYPE_CHECKING:
    from pathlib import Path

MODEL = "claude-3-haiku-20240307"


class Opaque:
    """Not a type msgspec knows how to encode."""


def entry(cid: str, **extra: Any) -> dict[str, Any]:
    params = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}]}
    return {"custom_id": cid, "params": {**params, **extra}}


def bad_entries() -> list[Any]:
    return [
        entry("ok-1"),
        entry("obj-2", metadata={"user_id": Opaque()}),
        entry("ok-3"),
        {"custom_id": "\ud800", "params": {"x": Opaque()}},  # not even the id encodes
        entry("ok-5", system="\ud800"),  # a lone surrogate
    ]


async def read_all(items: Any) -> list[RawLine]:
    send, receive = anyio.create_memory_object_stream[list[RawLine]](10)
    await iterable_source(send, items=items, batch=2)
    async with receive:
        return [line async for chunk in receive for line in chunk]


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_unencodable_entries_become_rejects_with_their_line(kind: str) -> None:
    async def aiter_items() -> Any:
        for item in bad_entries():
            yield item

    items = bad_entries() if kind == "sync" else aiter_items()
    lines = await read_all(items)
    assert [x.line for x in lines] == [1, 2, 3, 4, 5]
    out = Validator().check(lines)
    assert [type(x) for x in out] == [Entry, Reject, Entry, Reject, Reject]
    rejects = [x for x in out if isinstance(x, Reject)]
    assert [(r.line, r.custom_id, r.error.type) for r in rejects] == [
        (2, "obj-2", "invalid_request_error"),
        (4, None, "invalid_request_error"),
        (5, "ok-5", "invalid_request_error"),
    ]
    first = rejects[0].error.message
    assert first.startswith("the entry cannot be encoded as JSON (TypeError: ")
    assert "Opaque" in first
    assert "UnicodeEncodeError" in rejects[2].error.message


def test_an_entry_line_of_a_good_item_is_its_encoding() -> None:
    assert entry_line(7, {"a": {1}}) == RawLine(7, b'{"a":[1]}', -1)  # a set is an array
    assert entry_line(8, b'{"b":2}') == RawLine(8, b'{"b":2}', -1)
    assert entry_line(9, {"a": Opaque()}).data.startswith(UNENCODABLE_PREFIX)


async def test_a_job_goes_on_past_an_unencodable_entry(tmp_path: Path) -> None:
    """End to end over loopback: the bad entry is in the rejects file with its line,
    every other entry has its result."""
    items = [entry(f"req-{i}") for i in range(6)]
    items[2] = entry("bad-2", metadata={"user_id": Opaque()})
    config = PipelineConfig(linger_seconds=0.01, poll_interval=0.01, max_poll_interval=0.05)
    async with (
        serve_emulator(EmulatorConfig(batch_seconds=0.0), data_dir=tmp_path / "emu") as emu,
        Client(api_key="k", base_url=emu.url) as client,
    ):
        pipeline = Pipeline(
            items,
            tmp_path / "out.jsonl",
            config=config,
            client=client,
            state=tmp_path / "state",
        )
        with anyio.fail_after(30):
            stats = await pipeline.run()
    assert stats.rejected == 1
    results = [msgspec.json.decode(x) for x in (tmp_path / "out.jsonl").read_bytes().splitlines()]
    assert sorted(r["custom_id"] for r in results) == [f"req-{i}" for i in (0, 1, 3, 4, 5)]
    [reject] = [
        msgspec.json.decode(x) for x in (tmp_path / "out.rejects.jsonl").read_bytes().splitlines()
    ]
    assert (reject["line"], reject["custom_id"]) == (3, "bad-2")
    assert reject["error"]["type"] == "invalid_request_error"
    assert "cannot be encoded as JSON" in reject["error"]["message"]


@pytest.mark.parametrize(
    ("data", "kind"),
    [
        (b"[1, 2]", "a JSON array"),
        (b"42", "a JSON number"),
        (b'"text"', "a JSON string"),
        (b"null", "JSON null"),
        (b"true", "a JSON boolean"),
    ],
)
def test_json_that_is_not_an_object_is_not_a_custom_id_problem(data: bytes, kind: str) -> None:
    [reject] = Validator().check([RawLine(4, data, 10)])
    assert isinstance(reject, Reject)
    assert (reject.line, reject.custom_id, reject.end) == (4, None, 10 + len(data) + 1)
    assert reject.error.type == "invalid_request_error"
    assert reject.error.message == (
        f"the line is {kind}; each line must be a JSON object "
        '{"custom_id": ..., "params": {...}}'
    )


def test_an_object_without_custom_id_is_still_a_custom_id_problem() -> None:
    data = msgspec.json.encode({"params": entry("x")["params"]})
    [reject] = Validator().check([RawLine(1, data, 0)])
    assert isinstance(reject, Reject)
    assert reject.error.type == "invalid_custom_id"
