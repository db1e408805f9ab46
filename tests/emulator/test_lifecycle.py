"""Life cycle in virtual time: processing, cancel, expiry, retention, per-request errors."""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING, Any

from .conftest import MODEL, asgi_client, batch_body, lines, params

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx

    from pipeline.emulator import EmulatorApp, ManualClock

DAY = 86400.0


async def create(client: httpx.AsyncClient, body: dict[str, Any]) -> str:
    response = await client.post("/v1/messages/batches", json=body)
    assert response.status_code == 200, response.text
    return str(response.json()["id"])


async def get(client: httpx.AsyncClient, bid: str) -> dict[str, Any]:
    response = await client.get(f"/v1/messages/batches/{bid}")
    assert response.status_code == 200, response.text
    return dict(response.json())


async def result_types(client: httpx.AsyncClient, bid: str) -> dict[str, str]:
    response = await client.get(f"/v1/messages/batches/{bid}/results")
    assert response.status_code == 200, response.text
    return {r["custom_id"]: r["result"]["type"] for r in lines(response.content)}


async def test_in_progress_until_batch_seconds(
    make_app: Callable[..., EmulatorApp], clock: ManualClock
) -> None:
    async with asgi_client(make_app(batch_seconds=60.0)) as client:
        bid = await create(client, batch_body(5))
        clock.advance(59.9)
        batch = await get(client, bid)
        assert batch["processing_status"] == "in_progress"
        assert batch["request_counts"]["processing"] == 5
        assert batch["results_url"] is None
        clock.advance(0.1)
        batch = await get(client, bid)
        assert batch["processing_status"] == "ended"
        assert batch["request_counts"] == {
            "processing": 0,
            "succeeded": 5,
            "errored": 0,
            "canceled": 0,
            "expired": 0,
        }


async def test_a_batch_that_ends_on_time_processed_every_request(
    make_app: Callable[..., EmulatorApp], clock: ManualClock
) -> None:
    # created + batch_seconds - created is not batch_seconds in floats at epoch-sized
    # times: at 0.05 s that lost one request of 1,000 to "expired"
    for seconds in (0.05, 0.2, 0.3):
        async with asgi_client(make_app(batch_seconds=seconds)) as client:
            bid = await create(client, batch_body(1000))
            clock.advance(seconds)
            batch = await get(client, bid)
            assert batch["processing_status"] == "ended"
            assert batch["request_counts"]["succeeded"] == 1000, seconds
            assert batch["request_counts"]["expired"] == 0, seconds


async def test_invalid_params_end_errored_without_failing_others(
    make_app: Callable[..., EmulatorApp],
) -> None:
    body = batch_body(3)
    bad_role = params()
    bad_role["messages"][0]["role"] = "robot"
    body["requests"] += [
        {"custom_id": "bad-model", "params": params(model="nope")},
        {"custom_id": "bad-role", "params": bad_role},
        {"custom_id": "bad-field", "params": params(temperatur=0.5)},
        {"custom_id": "bad-type", "params": "not an object"},
        {"custom_id": "no-messages", "params": {"model": MODEL, "max_tokens": 1, "messages": []}},
    ]
    async with asgi_client(make_app(batch_seconds=0.0)) as client:
        bid = await create(client, body)
        batch = await get(client, bid)
        assert batch["request_counts"]["succeeded"] == 3
        assert batch["request_counts"]["errored"] == 5
        response = await client.get(f"/v1/messages/batches/{bid}/results")
    by_id = {r["custom_id"]: r["result"] for r in lines(response.content)}
    for cid, needle in [
        ("bad-model", "model: nope"),
        ("bad-role", "params.messages[0].role"),
        ("bad-field", "temperatur"),
        ("bad-type", "params"),
        ("no-messages", "params."),
    ]:
        error = by_id[cid]["error"]
        assert error["type"] == "error"
        # an unknown model is the service's 404 type, as on the Messages endpoint
        expected = "not_found_error" if cid == "bad-model" else "invalid_request_error"
        assert error["error"]["type"] == expected
        assert needle in error["error"]["message"], (cid, error)


async def test_cancel(make_app: Callable[..., EmulatorApp], clock: ManualClock) -> None:
    async with asgi_client(make_app(batch_seconds=100.0)) as client:
        bid = await create(client, batch_body(10))
        clock.advance(30.0)  # 3 of 10 processed
        canceled = (await client.post(f"/v1/messages/batches/{bid}/cancel")).json()
        assert canceled["processing_status"] == "canceling"
        assert canceled["cancel_initiated_at"] is not None
        assert canceled["request_counts"]["processing"] == 10
        batch = await get(client, bid)  # ends at the next look
        assert batch["processing_status"] == "ended"
        assert batch["request_counts"]["succeeded"] == 3
        assert batch["request_counts"]["canceled"] == 7
        types = await result_types(client, bid)
        assert Counter(types.values()) == {"succeeded": 3, "canceled": 7}
        again = await client.post(f"/v1/messages/batches/{bid}/cancel")
        assert again.status_code == 400


async def test_canceling_lasts_cancel_seconds(
    make_app: Callable[..., EmulatorApp], clock: ManualClock
) -> None:
    async with asgi_client(make_app(batch_seconds=100.0, cancel_seconds=5.0)) as client:
        bid = await create(client, batch_body(4))
        await client.post(f"/v1/messages/batches/{bid}/cancel")
        assert (await get(client, bid))["processing_status"] == "canceling"
        clock.advance(5.0)
        batch = await get(client, bid)
        assert batch["processing_status"] == "ended"
        assert batch["request_counts"]["canceled"] == 4


async def test_full_expiry(make_app: Callable[..., EmulatorApp], clock: ManualClock) -> None:
    async with asgi_client(make_app(batch_seconds=10 * DAY)) as client:
        bid = await create(client, batch_body(4))
        batch = await get(client, bid)
        clock.advance(DAY - 1)
        assert (await get(client, bid))["processing_status"] == "in_progress"
        clock.advance(1)
        batch = await get(client, bid)
        assert batch["processing_status"] == "ended"
        assert batch["ended_at"] == batch["expires_at"]
        assert batch["request_counts"]["expired"] == 4
        assert set((await result_types(client, bid)).values()) == {"expired"}


async def test_partial_expiry(make_app: Callable[..., EmulatorApp], clock: ManualClock) -> None:
    # Processing would take two days: half the requests are done when it expires.
    async with asgi_client(make_app(batch_seconds=2 * DAY)) as client:
        bid = await create(client, batch_body(10))
        clock.advance(3 * DAY)
        batch = await get(client, bid)
        assert batch["request_counts"]["succeeded"] == 5
        assert batch["request_counts"]["expired"] == 5
        assert Counter((await result_types(client, bid)).values()) == {
            "succeeded": 5,
            "expired": 5,
        }


async def test_retention(make_app: Callable[..., EmulatorApp], clock: ManualClock) -> None:
    app = make_app(batch_seconds=1.0, retention_seconds=29 * DAY)
    async with asgi_client(app) as client:
        bid = await create(client, batch_body(3))
        clock.advance(29 * DAY - 1)
        batch = await get(client, bid)
        assert batch["archived_at"] is None
        assert len(await result_types(client, bid)) == 3
        clock.advance(1)
        batch = await get(client, bid)
        assert batch["processing_status"] == "ended"
        assert batch["archived_at"] is not None
        assert batch["request_counts"]["succeeded"] == 3
        response = await client.get(f"/v1/messages/batches/{bid}/results")
        assert response.status_code == 404
        assert "no longer available" in response.json()["error"]["message"]
    assert not list((app.state.data_dir / "batches").glob("*.jsonl"))


async def test_request_error_rate(make_app: Callable[..., EmulatorApp]) -> None:
    async with asgi_client(make_app(batch_seconds=0.0, request_error_rate=0.5, seed=3)) as client:
        bid = await create(client, batch_body(200))
        response = await client.get(f"/v1/messages/batches/{bid}/results")
    results = lines(response.content)
    errored = [r for r in results if r["result"]["type"] == "errored"]
    assert 60 < len(errored) < 140
    assert {r["result"]["error"]["error"]["type"] for r in errored} == {"api_error"}


async def test_results_are_shuffled_and_deterministic(make_app: Callable[..., EmulatorApp]) -> None:
    outputs = []
    for _ in range(2):
        async with asgi_client(make_app(batch_seconds=0.0, seed=7)) as client:
            bid = await create(client, batch_body(50))
            outputs.append((await client.get(f"/v1/messages/batches/{bid}/results")).content)
    assert outputs[0] == outputs[1]
    order = [r["custom_id"] for r in lines(outputs[0])]
    assert sorted(order) == sorted(f"r{i}" for i in range(50))
    assert order != [f"r{i}" for i in range(50)]


async def test_a_bad_call_leaves_an_ended_batch_intact(
    make_app: Callable[..., EmulatorApp],
) -> None:
    async with asgi_client(make_app(batch_seconds=0.0)) as client:
        bid = await create(client, batch_body(3))
        before = await result_types(client, bid)
        await client.post("/v1/messages/batches", content=b"{")
        await client.post("/v1/messages/batches", json={"requests": []})
        assert await result_types(client, bid) == before


async def test_a_body_spooled_to_disk_gives_the_same_results(
    make_app: Callable[..., EmulatorApp],
) -> None:
    # The latest batch is processed from memory; an older one from its spooled body.
    # Both ways must give the same bytes, and leave no body file behind.
    outputs: list[bytes] = []
    for spooled in (False, True):
        app = make_app(batch_seconds=0.0, seed=3)
        async with asgi_client(app) as client:
            bid = await create(client, batch_body(40))
            if spooled:
                await create(client, batch_body(5, prefix="other"))
                assert (app.state.data_dir / "batches" / f"{bid}.body.json").exists()
            await get(client, bid)
            outputs.append((await client.get(f"/v1/messages/batches/{bid}/results")).content)
            assert not (app.state.data_dir / "batches" / f"{bid}.body.json").exists()
    assert outputs[0] == outputs[1]
    assert len(lines(outputs[0])) == 40
