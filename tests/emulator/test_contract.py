"""Emulator contracts over httpx.ASGITransport: envelopes, statuses, bad input."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

import msgspec
import pytest

from pipeline.api._schema import SchemaError, check_entry
from pipeline.api._types import ERROR_STATUS, MessageBatch, MessageBatchList

from .conftest import KEY, MODEL, asgi_client, batch_body, lines, params

if TYPE_CHECKING:
    from collections.abc import Callable

    import httpx

    from pipeline.emulator import EmulatorApp

BATCH_KEYS = {
    "id",
    "type",
    "processing_status",
    "request_counts",
    "created_at",
    "expires_at",
    "ended_at",
    "cancel_initiated_at",
    "archived_at",
    "results_url",
}
RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z$")


def assert_error(response: httpx.Response, error_type: str, contains: str = "") -> None:
    assert response.status_code == ERROR_STATUS[error_type], response.text
    body = response.json()
    assert body["type"] == "error"
    assert body["error"]["type"] == error_type
    assert contains in body["error"]["message"]
    assert response.headers["request-id"].startswith("req_")
    assert body["request_id"] == response.headers["request-id"]


async def create(client: httpx.AsyncClient, n: int = 3, **extra: Any) -> dict[str, Any]:
    response = await client.post("/v1/messages/batches", json=batch_body(n, **extra))
    assert response.status_code == 200, response.text
    return dict(response.json())


async def batch_errors(client: httpx.AsyncClient, n: int, **extra: Any) -> list[Any]:
    """The ``error`` of each result of an ended batch of ``n`` requests (``params`` with
    ``extra``), once its counts say they all errored."""
    batch = await create(client, n, **extra)
    ended = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
    assert ended["request_counts"]["errored"] == n
    results = lines((await client.get(ended["results_url"])).content)
    return [r["result"]["error"]["error"] for r in results]


async def test_create_shape(make_app: Callable[..., EmulatorApp]) -> None:
    async with asgi_client(make_app()) as client:
        response = await client.post("/v1/messages/batches", json=batch_body(3))
    assert response.status_code == 200
    assert response.headers["request-id"].startswith("req_")
    batch = response.json()
    assert set(batch) == BATCH_KEYS
    assert batch["type"] == "message_batch"
    assert batch["processing_status"] == "in_progress"
    assert batch["request_counts"] == {
        "processing": 3,
        "succeeded": 0,
        "errored": 0,
        "canceled": 0,
        "expired": 0,
    }
    assert batch["ended_at"] is batch["results_url"] is batch["archived_at"] is None
    assert RFC3339.match(batch["created_at"])
    assert RFC3339.match(batch["expires_at"])
    assert re.match(r"^msgbatch_[0-9a-f]{24}$", batch["id"])
    msgspec.convert(batch, MessageBatch)


async def test_ended_batch_and_results(make_app: Callable[..., EmulatorApp]) -> None:
    app = make_app(batch_seconds=0.0)
    async with asgi_client(app) as client:
        batch = await create(client, 4)
        ended = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
        assert ended["processing_status"] == "ended"
        assert ended["request_counts"]["succeeded"] == 4
        assert RFC3339.match(ended["ended_at"])
        url = ended["results_url"]
        assert url == f"http://emulator.test/v1/messages/batches/{batch['id']}/results"
        response = await client.get(url)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-jsonl"
    assert (
        response.headers["content-disposition"]
        == f"attachment; filename*=utf-8''{batch['id']}_results.jsonl"
    )
    results = lines(response.content)
    assert sorted(r["custom_id"] for r in results) == ["r0", "r1", "r2", "r3"]
    assert all(r["result"]["type"] == "succeeded" for r in results)


async def test_works_with_beta_header_and_bearer(make_app: Callable[..., EmulatorApp]) -> None:
    app = make_app()
    async with asgi_client(app, key=None) as client:
        headers = {
            "authorization": f"Bearer {KEY}",
            "anthropic-beta": "message-batches-2024-09-24",
        }
        response = await client.post("/v1/messages/batches", json=batch_body(1), headers=headers)
        assert response.status_code == 200
        # The same key by x-api-key sees the same workspace.
        got = await client.get(
            f"/v1/messages/batches/{response.json()['id']}", headers={"x-api-key": KEY}
        )
        assert got.status_code == 200


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b"{not json", "malformed"),
        (b"[]", "expected `object`"),
        (b'{"requests": "x"}', "requests"),
        (b'{"requests": [], "extra": 1}', "extra"),
        (b'{"requests": [{"custom_id": "a"}]}', "params"),
        (b'{"requests": [{"custom_id": 5, "params": {}}]}', "requests[0].custom_id"),
        (b'{"requests": [{"custom_id": "a", "params": {}, "x": 1}]}', "x"),
        (b'{"requests": [{"custom_id": "a b", "params": {}}]}', "requests[0].custom_id"),
        (b'{"requests": [{"custom_id": "", "params": {}}]}', "requests[0].custom_id"),
        (b'{"requests": [{"custom_id": "' + b"a" * 65 + b'", "params": {}}]}', "custom_id"),
        (
            b'{"requests": [{"custom_id": "a", "params": {}}, {"custom_id": "a", "params": {}}]}',
            'requests[1].custom_id: duplicate custom_id "a"',
        ),
        (b'{"requests": []}', "at least 1"),
    ],
)
async def test_bad_create_bodies(
    make_app: Callable[..., EmulatorApp], body: bytes, needle: str
) -> None:
    app = make_app()
    async with asgi_client(app) as client:
        existing = await create(client, 2)
        response = await client.post(
            "/v1/messages/batches", content=body, headers={"content-type": "application/json"}
        )
        assert_error(response, "invalid_request_error", needle)
        page = (await client.get("/v1/messages/batches")).json()
    assert [b["id"] for b in page["data"]] == [existing["id"]]
    assert app.state.stats.batches == 1


async def test_too_many_requests(make_app: Callable[..., EmulatorApp]) -> None:
    app = make_app(max_batch_requests=5)
    async with asgi_client(app) as client:
        await create(client, 5)
        response = await client.post("/v1/messages/batches", json=batch_body(6))
        assert_error(response, "invalid_request_error", "limit of 5")
    assert app.state.stats.batches == 1


async def test_too_many_bytes_is_413_after_drain(make_app: Callable[..., EmulatorApp]) -> None:
    app = make_app(max_batch_bytes=2000)
    async with asgi_client(app) as client:
        await create(client, 2)
        body = msgspec.json.encode(batch_body(40))
        assert len(body) > 2000
        chunks = [body[i : i + 100] for i in range(0, len(body), 100)]
        sent: list[int] = []

        async def stream() -> Any:
            for chunk in chunks:
                sent.append(len(chunk))
                yield chunk

        response = await client.post("/v1/messages/batches", content=stream())
        assert_error(response, "request_too_large", "2000")
    assert sum(sent) == len(body)  # the whole body was read before the answer
    assert app.state.stats.batches == 1


async def test_auth_and_workspaces(make_app: Callable[..., EmulatorApp]) -> None:
    secret = "sk-very-secret-key"
    app = make_app(workspaces={"team-a-1": "team-a", "team-a-2": "team-a"})
    async with (
        asgi_client(app, key=None) as anon,
        asgi_client(app, key=secret) as other,
        asgi_client(app, key="team-a-1") as a1,
        asgi_client(app, key="team-a-2") as a2,
    ):
        response = await anon.post("/v1/messages/batches", json=batch_body(1))
        assert_error(response, "authentication_error", "API key")
        assert_error(await anon.get("/v1/messages/batches"), "authentication_error")
        mine = await create(a1, 1)
        # Another key of the same workspace sees it ...
        assert (await a2.get(f"/v1/messages/batches/{mine['id']}")).status_code == 200
        assert [b["id"] for b in (await a2.get("/v1/messages/batches")).json()["data"]] == [
            mine["id"]
        ]
        # ... another workspace never does.
        for method, path in [
            ("GET", f"/v1/messages/batches/{mine['id']}"),
            ("POST", f"/v1/messages/batches/{mine['id']}/cancel"),
            ("DELETE", f"/v1/messages/batches/{mine['id']}"),
            ("GET", f"/v1/messages/batches/{mine['id']}/results"),
        ]:
            response = await other.request(method, path)
            assert_error(response, "not_found_error")
            assert secret not in response.text
        assert (await other.get("/v1/messages/batches")).json()["data"] == []
        assert (await a1.get(f"/v1/messages/batches/{mine['id']}")).json()["processing_status"]
        # A workspace-bound key naming another workspace is refused.
        wrong = await a1.get("/v1/messages/batches", headers={"anthropic-workspace-id": "team-b"})
        assert_error(wrong, "permission_error")
        right = await a1.get("/v1/messages/batches", headers={"anthropic-workspace-id": "team-a"})
        assert right.status_code == 200


async def test_list_pagination(make_app: Callable[..., EmulatorApp]) -> None:
    app = make_app()
    async with asgi_client(app) as client:
        ids = [(await create(client, 1))["id"] for _ in range(7)]
        newest_first = ids[::-1]
        page = (await client.get("/v1/messages/batches", params={"limit": 3})).json()
        msgspec.convert(page, MessageBatchList)
        assert [b["id"] for b in page["data"]] == newest_first[:3]
        assert page["has_more"] is True
        assert page["first_id"] == newest_first[0]
        assert page["last_id"] == newest_first[2]
        seen: list[str] = []
        cursor = None
        while True:
            query: dict[str, Any] = {"limit": 3}
            if cursor:
                query["after_id"] = cursor
            page = (await client.get("/v1/messages/batches", params=query)).json()
            seen += [b["id"] for b in page["data"]]
            cursor = page["last_id"]
            if not page["has_more"]:
                break
        assert seen == newest_first
        before = (
            await client.get(
                "/v1/messages/batches", params={"limit": 2, "before_id": newest_first[4]}
            )
        ).json()
        assert [b["id"] for b in before["data"]] == newest_first[2:4]
        assert before["has_more"] is True
        default = (await client.get("/v1/messages/batches")).json()
        assert len(default["data"]) == 7
        assert default["has_more"] is False
        for bad in ("0", "1001", "x"):
            response = await client.get("/v1/messages/batches", params={"limit": bad})
            assert_error(response, "invalid_request_error", "limit")
        response = await client.get("/v1/messages/batches", params={"after_id": "nope"})
        assert_error(response, "invalid_request_error", "after_id")


async def test_delete_and_results_only_once_ended(make_app: Callable[..., EmulatorApp]) -> None:
    app = make_app(batch_seconds=10.0)
    async with asgi_client(app) as client:
        batch = await create(client, 2)
        bid = batch["id"]
        assert_error(
            await client.delete(f"/v1/messages/batches/{bid}"), "invalid_request_error", "ended"
        )
        assert_error(
            await client.get(f"/v1/messages/batches/{bid}/results"),
            "invalid_request_error",
            "not ended",
        )
        assert app.config.clock is not None
        app.config.clock.advance(10.0)  # type: ignore[attr-defined]
        deleted = await client.delete(f"/v1/messages/batches/{bid}")
        assert deleted.json() == {"id": bid, "type": "message_batch_deleted"}
        assert_error(await client.get(f"/v1/messages/batches/{bid}"), "not_found_error")
        assert (await client.get("/v1/messages/batches")).json()["data"] == []
    assert list((app.state.data_dir / "batches").iterdir()) == []


async def test_unknown_paths_and_ids(make_app: Callable[..., EmulatorApp]) -> None:
    async with asgi_client(make_app()) as client:
        assert_error(await client.get("/v1/messages/batches/msgbatch_nope"), "not_found_error")
        assert_error(await client.get("/v1/nothing"), "not_found_error")
        assert_error(await client.get("/elsewhere"), "not_found_error")


async def test_messages_endpoint(make_app: Callable[..., EmulatorApp]) -> None:
    async with asgi_client(make_app()) as client:
        first = await client.post("/v1/messages", json=params("hi there"))
        again = await client.post("/v1/messages", json=params("hi there"))
        assert first.status_code == 200
        assert first.json() == again.json()
        message = first.json()
        assert message["type"] == "message"
        assert message["role"] == "assistant"
        assert message["model"] == MODEL
        assert message["stop_reason"] == "end_turn"
        assert message["usage"]["input_tokens"] > 0
        counted = await client.post(
            "/v1/messages/count_tokens",
            json={"model": MODEL, "messages": [{"role": "user", "content": "hi there"}]},
        )
        assert counted.json() == {"input_tokens": message["usage"]["input_tokens"]}
        bad_role = params()
        bad_role["messages"][0]["role"] = "robot"
        assert_error(
            await client.post("/v1/messages", json=bad_role), "invalid_request_error", "role"
        )
        assert_error(
            await client.post("/v1/messages", json=params(model="gpt-4")),
            "not_found_error",
            "model: gpt-4",
        )
        assert_error(
            await client.post("/v1/messages", json=params(bogus=1)),
            "invalid_request_error",
            "bogus",
        )
        assert_error(
            await client.post(
                "/v1/messages/count_tokens", json={"model": MODEL, "messages": [], "max_tokens": 1}
            ),
            "invalid_request_error",
            "max_tokens",
        )


@pytest.mark.parametrize("model", ["claude-sonnet-5-5", "claude-opus-4-1", "claude-haiku-4-5"])
async def test_todays_models_are_served_and_a_misspelt_one_is_not(
    make_app: Callable[..., EmulatorApp], model: str
) -> None:
    async with asgi_client(make_app()) as client:
        answer = await client.post("/v1/messages", json=params("hi", model=model))
        assert answer.status_code == 200, answer.text
        assert answer.json()["model"] == model
        misspelt = model.replace("claude-", "claud-")
        assert_error(
            await client.post("/v1/messages", json=params("hi", model=misspelt)),
            "not_found_error",
            f"model: {misspelt}",
        )


async def test_allowed_new_fields_are_taken_unchecked_and_others_still_refused(
    make_app: Callable[..., EmulatorApp],
) -> None:
    async with asgi_client(make_app()) as client:
        assert_error(
            await client.post("/v1/messages", json=params(effort="high")),
            "invalid_request_error",
            "effort",
        )
    async with asgi_client(make_app(allow_fields=frozenset({"effort"}), batch_seconds=0)) as client:
        answer = await client.post("/v1/messages", json=params(effort="high"))
        assert answer.status_code == 200, answer.text
        counted = await client.post(
            "/v1/messages/count_tokens",
            json={"model": MODEL, "messages": [{"role": "user", "content": "x"}], "effort": "high"},
        )
        assert counted.status_code == 200, counted.text
        batch = await create(client, 2, effort="high")
        ended = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
        assert ended["request_counts"]["succeeded"] == 2
        assert_error(
            await client.post("/v1/messages", json=params(effort="high", bogus=1)),
            "invalid_request_error",
            "bogus",
        )


async def test_too_many_cache_breakpoints_answer_as_the_service_does(
    make_app: Callable[..., EmulatorApp],
) -> None:
    """More than 4 cache_control breakpoints: a 400 from /v1/messages; in a batch the
    create succeeds and the request comes back errored."""
    block = {"type": "text", "text": "Be brief.", "cache_control": {"type": "ephemeral"}}
    reason = "A maximum of 4 blocks with cache_control may be provided. Found 5."
    async with asgi_client(make_app(batch_seconds=0.0)) as client:
        ok = await client.post("/v1/messages", json=params(system=[block] * 4))
        assert ok.status_code == 200, ok.text
        refused = await client.post("/v1/messages", json=params(system=[block] * 5))
        assert_error(refused, "invalid_request_error", reason)
        errors = await batch_errors(client, 2, system=[block] * 5)
    assert (
        errors
        == [
            {
                "type": "invalid_request_error",
                "message": f"params.system[4].cache_control: {reason}",
            }
        ]
        * 2
    )


async def test_a_misspelt_custom_tool_field_is_refused_as_the_service_does(
    make_app: Callable[..., EmulatorApp],
) -> None:
    """A custom tool with a field its type does not have (``descripton``): a 400 from
    /v1/messages and count_tokens; in a batch the request comes back errored, with the
    same words as the pipeline's local check."""
    tool = {"name": "lookup", "descripton": "x", "input_schema": {"type": "object"}}
    good = {"name": "lookup", "description": "x", "input_schema": {"type": "object"}}
    reason = "tools[0]: unknown field `descripton`"
    async with asgi_client(make_app(batch_seconds=0.0)) as client:
        ok = await client.post("/v1/messages", json=params(tools=[good]))
        assert ok.status_code == 200, ok.text
        assert_error(
            await client.post("/v1/messages", json=params(tools=[tool])),
            "invalid_request_error",
            reason,
        )
        counted = params(tools=[tool])
        del counted["max_tokens"]
        assert_error(
            await client.post("/v1/messages/count_tokens", json=counted),
            "invalid_request_error",
            reason,
        )
        errors = await batch_errors(client, 2, tools=[tool])
    assert errors == [{"type": "invalid_request_error", "message": f"params.{reason}"}] * 2
    local = check_entry(msgspec.json.encode({"custom_id": "a", "params": params(tools=[tool])}))
    assert isinstance(local, SchemaError)
    assert local.message == f"params.{reason}"


async def test_admin_endpoints(make_app: Callable[..., EmulatorApp]) -> None:
    app = make_app(batch_seconds=5.0)
    async with asgi_client(app) as client:
        await create(client, 3, prefix="a")
        await create(client, 2, prefix="a")
        submissions = (await client.get("/_emulator/submissions")).json()
        assert submissions == {"a0": 2, "a1": 2, "a2": 1}
        as_lines = await client.get("/_emulator/submissions", params={"format": "jsonl"})
        assert {r["custom_id"]: r["count"] for r in lines(as_lines.content)} == submissions
        stats = (await client.get("/_emulator/stats")).json()
        assert stats["batches"] == 2
        assert stats["requests_created"] == 5
        advanced = await client.post("/_emulator/advance", params={"seconds": 5})
        assert advanced.status_code == 200
        page = (await client.get("/v1/messages/batches")).json()
        assert {b["processing_status"] for b in page["data"]} == {"ended"}


async def test_internal_errors_answer_with_the_envelope(
    make_app: Callable[..., EmulatorApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    app = make_app()

    def broken(*args: object) -> None:
        raise RuntimeError("boom")

    monkeypatch.setattr(app.state, "page", broken)
    async with asgi_client(app) as client:
        assert_error(await client.get("/v1/messages/batches"), "api_error", "emulator")
        assert (await client.post("/v1/messages/batches", json=batch_body(1))).status_code == 200


async def test_a_failing_check_errors_one_request_not_the_batch(
    make_app: Callable[..., EmulatorApp], monkeypatch: pytest.MonkeyPatch
) -> None:
    from pipeline.emulator import _store

    real = _store.check_params

    def flaky(params: Any, **kwargs: Any) -> str | None:
        if params.messages[0].content == "question 1":
            raise ValueError("bug")
        return real(params, **kwargs)

    monkeypatch.setattr(_store, "check_params", flaky)
    app = make_app(batch_seconds=0.0)
    async with asgi_client(app) as client:
        batch = await create(client, 3)
        got = (await client.get(f"/v1/messages/batches/{batch['id']}")).json()
    assert got["request_counts"]["succeeded"] == 2
    assert got["request_counts"]["errored"] == 1


async def test_api_key_is_never_echoed(make_app: Callable[..., EmulatorApp]) -> None:
    secret = "sk-ant-secret-value-123"
    app = make_app(batch_seconds=0.0)
    async with asgi_client(app, key=secret) as client:
        batch = await create(client, 1)
        answers = [
            await client.get(f"/v1/messages/batches/{batch['id']}"),
            await client.get(f"/v1/messages/batches/{batch['id']}/results"),
            await client.get("/v1/messages/batches"),
            await client.get("/v1/messages/batches/msgbatch_missing"),
            await client.get("/_emulator/stats"),
        ]
    for response in answers:
        assert secret not in response.text
        assert all(secret not in value for value in response.headers.values())
