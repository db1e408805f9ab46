"""An emulator with a data directory survives a restart, graceful or a kill.

The same calls are made on an emulator that never restarts and on one restarted
midway (closed, or left open as a killed process leaves it, or killed for real in
a subprocess): every answer must be the same, batch ids aside.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from typing import TYPE_CHECKING, Any

import httpx
import msgspec
import pytest

from pipeline.emulator import ManualClock
from pipeline.testing import read_submissions

from .conftest import KEY, asgi_client, batch_body, lines

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator
    from pathlib import Path

    from pipeline.emulator import EmulatorApp

OTHER_KEY = "sk-test-key-2"
CONFIG: dict[str, Any] = {"batch_seconds": 100.0, "cancel_seconds": 5.0, "seed": 5}
BATCHES = "/v1/messages/batches"


class Recorder:
    """The answers of a run, with batch ids replaced by the names the test gave them."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, int, bytes]] = []
        self.ids: dict[str, str] = {}

    def name(self, label: str, response: httpx.Response) -> str:
        assert response.status_code == 200, response.text
        self.ids[response.json()["id"]] = label
        return str(response.json()["id"])

    def add(self, what: str, response: httpx.Response) -> None:
        body = response.content
        if response.status_code != 200:  # the envelope's request id differs per run
            body = response.json()["error"]["type"].encode()
        for batch_id, label in self.ids.items():
            body = body.replace(batch_id.encode(), label.encode())
        self.seen.append((what, response.status_code, body))


async def scenario(
    make: Callable[..., EmulatorApp], restart: Callable[[EmulatorApp], EmulatorApp]
) -> tuple[list[tuple[str, int, bytes]], EmulatorApp]:
    """Batches in every state at the restart: ended (results fetched), ended and
    deleted, canceling, in progress (another workspace); then the same calls."""
    clock = ManualClock()
    app = make(clock=clock, **CONFIG)
    rec = Recorder()
    async with asgi_client(app) as one, asgi_client(app, OTHER_KEY) as two:
        a = rec.name("A", await one.post(BATCHES, json=batch_body(4, "a")))
        d = rec.name("D", await one.post(BATCHES, json=batch_body(2, "d")))
        clock.advance(100)
        rec.add("get A", await one.get(f"{BATCHES}/{a}"))
        rec.add("results A", await one.get(f"{BATCHES}/{a}/results"))
        rec.add("delete D", await one.delete(f"{BATCHES}/{d}"))
        b = rec.name("B", await one.post(BATCHES, json=batch_body(10, "b")))
        clock.advance(30)
        rec.add("cancel B", await one.post(f"{BATCHES}/{b}/cancel"))
        c = rec.name("C", await two.post(BATCHES, json=batch_body(6, "c")))
        rec.add("list", await one.get(BATCHES))
    app = restart(app)
    async with asgi_client(app) as one, asgi_client(app, OTHER_KEY) as two:
        rec.add("list", await one.get(BATCHES))
        rec.add("list other", await two.get(BATCHES))
        rec.add("get A", await one.get(f"{BATCHES}/{a}"))
        rec.add("results A", await one.get(f"{BATCHES}/{a}/results"))
        rec.add("get D", await one.get(f"{BATCHES}/{d}"))
        rec.add("get B", await one.get(f"{BATCHES}/{b}"))
        rec.add("delete B", await one.delete(f"{BATCHES}/{b}"))
        rec.add("C from the wrong workspace", await one.get(f"{BATCHES}/{c}"))
        clock.advance(5)
        rec.add("get B", await one.get(f"{BATCHES}/{b}"))
        rec.add("results B", await one.get(f"{BATCHES}/{b}/results"))
        rec.add("get C", await two.get(f"{BATCHES}/{c}"))
        clock.advance(100)
        rec.add("get C", await two.get(f"{BATCHES}/{c}"))
        rec.add("results C", await two.get(f"{BATCHES}/{c}/results"))
        rec.name("E", await one.post(BATCHES, json=batch_body(3, "e")))
        first = await one.get(BATCHES, params={"limit": 2})
        rec.add("page 1", first)
        rec.add("page 2", await one.get(BATCHES, params={"after_id": first.json()["last_id"]}))
        rec.add("delete A", await one.delete(f"{BATCHES}/{a}"))
        rec.add("get A", await one.get(f"{BATCHES}/{a}"))
        rec.add("cancel C", await two.post(f"{BATCHES}/{c}/cancel"))
        rec.add("submissions", await one.get("/_emulator/submissions"))
    return rec.seen, app


def by_name(seen: list[tuple[str, int, bytes]], what: str) -> list[Any]:
    return [msgspec.json.decode(body) for name, status, body in seen if name == what]


@pytest.mark.parametrize("graceful", [True, False], ids=["closed", "not-closed"])
async def test_a_restart_changes_no_answer(
    make_app: Callable[..., EmulatorApp], graceful: bool
) -> None:
    reference, _ = await scenario(make_app, lambda app: app)

    def restart(app: EmulatorApp) -> EmulatorApp:
        if graceful:
            app.close()
        # Not closed: as a killed process leaves it (the fixture closes it at the end).
        return make_app(data_dir=app.state.data_dir, **CONFIG, clock=app.config.clock)

    restarted, app = await scenario(make_app, restart)
    assert restarted == reference
    assert app.state.stats.batches_loaded == 3  # A, B and C; D was deleted

    # The scenario says what it should: the answers compared are the real ones.
    assert [b["processing_status"] for b in by_name(reference, "get B")] == [
        "canceling",
        "ended",
    ]
    assert by_name(reference, "get B")[1]["request_counts"]["canceled"] == 7
    assert len(by_name(reference, "list")[1]["data"]) == 2  # A and B (C: other workspace)
    assert [b["processing_status"] for b in by_name(reference, "get C")] == [
        "in_progress",
        "ended",
    ]
    results = [lines(body) for name, _, body in reference if name == "results A"]
    assert results[0] == results[1]
    assert len(results[0]) == 4
    statuses = {name: status for name, status, _ in reference}
    assert statuses["get D"] == statuses["get A"] == 404  # deleted before / after
    assert statuses["delete B"] == 400  # still canceling
    assert statuses["C from the wrong workspace"] == 404
    pages = by_name(reference, "page 1") + by_name(reference, "page 2")
    assert [[b["id"] for b in p["data"]] for p in pages] == [["E", "B"], ["A"]]
    assert by_name(reference, "submissions")[0]["a0"] == 1


async def test_the_submissions_log_is_appended_across_restarts(
    make_app: Callable[..., EmulatorApp],
) -> None:
    app = make_app(batch_seconds=0.0)
    async with asgi_client(app) as client:
        await client.post(BATCHES, json=batch_body(3))
    app.close()
    log = app.state.data_dir / "submissions.log"
    assert log.read_bytes() == b"r0\nr1\nr2\n"
    again = make_app(data_dir=app.state.data_dir, batch_seconds=0.0)
    assert again.state.submissions() == {"r0": 1, "r1": 1, "r2": 1}
    async with asgi_client(again) as client:
        await client.post(BATCHES, json=batch_body(2))
    assert again.state.submissions() == {"r0": 2, "r1": 2, "r2": 1}
    assert read_submissions(app.state.data_dir) == again.state.submissions()
    assert log.read_bytes() == b"r0\nr1\nr2\nr0\nr1\n"


@pytest.mark.parametrize("kept", range(10))
async def test_a_kill_during_the_log_write_is_made_good_at_start(
    make_app: Callable[..., EmulatorApp], kept: int
) -> None:
    """A create's record is written before its lines in the log: killed in between
    (``kept`` bytes of its lines reached the log, the last one maybe torn), the next
    start writes what is missing, so the log still counts each batch once."""
    app = make_app(**CONFIG)
    async with asgi_client(app) as client:
        await client.post(BATCHES, json=batch_body(3, "a"))
        await client.post(BATCHES, json=batch_body(3, "b"))
    app.close()
    log = app.state.data_dir / "submissions.log"
    full = log.read_bytes()
    assert full == b"a0\na1\na2\nb0\nb1\nb2\n"
    log.write_bytes(full[: 9 + kept])  # 0..9 bytes of b's lines
    again = make_app(data_dir=app.state.data_dir, **CONFIG)
    assert log.read_bytes() == full
    async with asgi_client(again) as client:
        await client.post(BATCHES, json=batch_body(1, "c"))
    assert log.read_bytes() == full + b"c0\n"
    assert again.state.submissions() == {
        "a0": 1,
        "a1": 1,
        "a2": 1,
        "b0": 1,
        "b1": 1,
        "b2": 1,
        "c0": 1,
    }


async def test_a_kill_while_results_are_written_regenerates_them(
    make_app: Callable[..., EmulatorApp], clock: ManualClock
) -> None:
    """Killed after the results file is in place but before the record says so:
    the body is still there, and the restarted emulator produces the same results."""
    app = make_app(**CONFIG)
    folder = app.state.data_dir / "batches"
    async with asgi_client(app) as client:
        bid = (await client.post(BATCHES, json=batch_body(8))).json()["id"]
        meta, body = folder / f"{bid}.meta.json", folder / f"{bid}.body.json"
        before = meta.read_bytes(), body.read_bytes()
        clock.advance(100)
        ended = (await client.get(f"{BATCHES}/{bid}")).json()
        results = (await client.get(f"{BATCHES}/{bid}/results")).content
    assert not body.exists()
    meta.write_bytes(before[0])
    body.write_bytes(before[1])
    again = make_app(data_dir=app.state.data_dir, **CONFIG)
    async with asgi_client(again) as client:
        assert (await client.get(f"{BATCHES}/{bid}")).json() == ended
        assert (await client.get(f"{BATCHES}/{bid}/results")).content == results
    assert not body.exists()


async def test_leftovers_of_a_kill_are_removed_at_start(
    make_app: Callable[..., EmulatorApp],
) -> None:
    app = make_app(**CONFIG)
    async with asgi_client(app) as client:
        bid = (await client.post(BATCHES, json=batch_body(2))).json()["id"]
    folder = app.state.data_dir / "batches"
    kept = sorted(p.name for p in folder.iterdir())
    assert kept == [f"{bid}.body.json", f"{bid}.meta.json"]
    leftovers = [
        "0123abcd-7.body.json.tmp",  # a body being written when the create was killed
        "msgbatch_00000000ff0123456789abcd.body.json",  # its batch never recorded
        f"{bid}.meta.json.tmp",
        f"{bid}.results.jsonl.tmp",
    ]
    for name in leftovers:
        (folder / name).write_bytes(b"{")
    again = make_app(data_dir=app.state.data_dir, **CONFIG)
    assert sorted(p.name for p in folder.iterdir()) == kept
    assert [r.id for r in again.state.batches()] == [bid]


async def test_without_a_data_directory_nothing_is_kept(tmp_path: Path) -> None:
    from pipeline.emulator import EmulatorConfig, create_app

    app = create_app(EmulatorConfig(batch_seconds=100.0))
    try:
        assert not app.state.durable
        async with asgi_client(app) as client:
            await client.post(BATCHES, json=batch_body(2))
        assert not list((app.state.data_dir / "batches").glob("*.meta.json"))
    finally:
        app.close()
    assert not app.state.data_dir.exists()


# ---------------------------------------------------------------------- a real kill


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[str]]]:
    started: list[subprocess.Popen[str]] = []
    yield started
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def start(processes: list[subprocess.Popen[str]], data_dir: Path) -> str:
    """``python -m pipeline emulator`` on ``data_dir`` with a manual clock; its URL."""
    command = [
        sys.executable, "-m", "pipeline", "emulator", "--port", "0", "--data-dir", str(data_dir),
        "--manual-clock", "--batch-seconds", "100",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    processes.append(proc)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("emulator listening on "), line
    return line.split()[-1]


async def test_a_killed_emulator_process_serves_its_batches_again(
    processes: list[subprocess.Popen[str]], tmp_path: Path
) -> None:
    url = start(processes, tmp_path)
    async with httpx.AsyncClient(
        base_url=url, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    ) as http:
        ended = (await http.post(BATCHES, json=batch_body(5, "x"))).json()["id"]
        await http.post("/_emulator/advance", params={"seconds": 100})
        before = (await http.get(f"{BATCHES}/{ended}")).json()
        results = (await http.get(f"{BATCHES}/{ended}/results")).content
        running = (await http.post(BATCHES, json=batch_body(3, "y"))).json()["id"]
    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait()

    url = start(processes, tmp_path)  # its manual clock starts over, before `running`
    async with httpx.AsyncClient(
        base_url=url, headers={"x-api-key": KEY, "anthropic-version": "2023-06-01"}
    ) as http:
        again = (await http.get(f"{BATCHES}/{ended}")).json()
        assert again["results_url"].startswith(url)
        assert {**again, "results_url": None} == {**before, "results_url": None}
        assert (await http.get(f"{BATCHES}/{ended}/results")).content == results
        assert (await http.get(f"{BATCHES}/{running}")).json()["processing_status"] == (
            "in_progress"
        )
        await http.post("/_emulator/advance", params={"seconds": 200})
        batch = (await http.get(f"{BATCHES}/{running}")).json()
        assert batch["request_counts"]["succeeded"] == 3
        listed = (await http.get(BATCHES)).json()
        assert [b["id"] for b in listed["data"]] == [running, ended]
        assert (await http.delete(f"{BATCHES}/{ended}")).status_code == 200
        assert (await http.get(f"{BATCHES}/{ended}")).status_code == 404
        submitted = (await http.get("/_emulator/submissions")).json()
    assert submitted == {**{f"x{i}": 1 for i in range(5)}, **{f"y{i}": 1 for i in range(3)}}
