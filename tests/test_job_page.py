"""The live job page in a real headless browser (Debian's Chromium driven by
Playwright): it follows a job as it runs and, once the job is done, shows the
summary's counts. The emulator's clock is manual, so the test decides when batches
end; the waits are on the page's DOM, never sleeps.

Set ``PIPELINE_JOB_PAGE_SCREENSHOT=docs/job-page.png`` to refresh the README's
screenshot (the test always saves one in its temporary directory)."""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import msgspec
import pytest
from playwright.async_api import Page, async_playwright

from pipeline import Client, JobMonitor, Pipeline, PipelineConfig
from pipeline.testing import EmulatorConfig, ManualClock, serve_emulator
from tests._helpers import BAD_LINES, KEY, quick

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
HAIKU = "claude-3-haiku-20240307"
SONNET = "claude-3-5-sonnet-20241022"
BATCH_SECONDS = 60.0
CONFIG = PipelineConfig(
    max_batch_requests=50,
    linger_seconds=0.05,
    poll_interval=0.02,
    max_poll_interval=0.05,
    max_attempts=1,  # an errored result is final: outcomes by type on the page
    dry_run="off",
)


def entry(i: int) -> bytes:
    model = SONNET if i % 3 == 0 else HAIKU
    return msgspec.json.encode(
        {
            "custom_id": f"q-{i:04d}",
            "params": {
                "model": model,
                "max_tokens": 64,
                "messages": [{"role": "user", "content": f"Summarise record {i} in a line."}],
            },
        }
    )


async def text(page: Page, selector: str) -> str:
    return (await page.text_content(selector) or "").strip()


async def wait_text(page: Page, element_id: str, want: str) -> None:
    """Wait until the element's text is ``want`` (the page redraws every 0.2 s)."""
    await page.wait_for_function(
        "([id, want]) => document.getElementById(id).textContent.trim() === want",
        arg=[element_id, want],
    )


def number(value: str) -> int:
    return int(value.replace(",", ""))


async def test_the_job_page_follows_a_running_job_and_ends_with_the_summary_counts(
    tmp_path: Path,
) -> None:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} is missing: apt-get install chromium (.ci/run does)")
    second_part = anyio.Event()

    async def source() -> AsyncIterator[bytes]:
        for i in range(300):
            yield entry(i)
            if i % 97 == 5:  # a few bad lines, of two reject types
                for line in BAD_LINES["invalid_json"][:1]:
                    yield line
        yield BAD_LINES["invalid_custom_id"][0]
        await second_part.wait()
        for i in range(300, 500):
            yield entry(i)

    # the service's clock: batches end when the test says; it starts a little in the
    # past, so that the page shows batches of some age
    clock = ManualClock(start=time.time() - 2 * BATCH_SECONDS)
    emu_config = EmulatorConfig(
        batch_seconds=BATCH_SECONDS, request_error_rate=0.08, clock=clock, seed=7
    )
    async with (
        serve_emulator(emu_config, data_dir=tmp_path / "emu") as emu,
        Client(api_key=KEY, base_url=emu.url, sleep=quick) as client,
    ):
        pipeline = Pipeline(
            source(), tmp_path / "out.jsonl", state=tmp_path / "job.state", config=CONFIG,
            client=client,
        )  # fmt: skip
        monitor = JobMonitor(pipeline)
        async with monitor.serve() as url, async_playwright() as playwright:
            browser = await playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1280, "height": 900})
                await page.goto(url + "/?every=0.2")
                await wait_text(page, "written", "0")
                async with pipeline:
                    # the first 300 are at the service: the page lists their batches
                    await wait_text(page, "in_flight", "300")
                    await wait_text(page, "batches_in_flight", "6")
                    assert await page.locator("#batches tbody tr").count() == 6
                    assert await text(page, "#state") == "running"
                    clock.advance(BATCH_SECONDS * 3 / 4)
                    second_part.set()  # 200 more: 4 batches, 45 s younger
                    await wait_text(page, "in_flight", "500")
                    clock.advance(BATCH_SECONDS / 2)  # the first 6 batches end
                    await wait_text(page, "written", "300")
                    await wait_text(page, "in_flight", "200")
                    assert await text(page, "#percent") == "60.0%"
                    rejects = await text(page, "#rejects")
                    assert "invalid_json" in rejects
                    assert "invalid_custom_id" in rejects
                    assert "line 7" in rejects  # the first reject's line number
                    await page.wait_for_function(
                        "() => document.querySelectorAll('#chart path').length > 0"
                    )
                    shot = await page.screenshot(full_page=True)
                    clock.advance(BATCH_SECONDS)  # the last 4 end too
                    stats = await pipeline.wait()
                await page.wait_for_function("() => document.body.dataset.finished === 'true'")
                await wait_text(page, "written", f"{stats.written:,}")
                shown = {
                    key: number(await text(page, f"#{key}"))
                    for key in ("read", "rejected", "submitted", "written", "batches_submitted")
                }
                succeeded = number(await text(page, "#outcome-succeeded td.num"))
                errored = number(await text(page, "#outcome-errored td.num"))
                state = await text(page, "#state")
            finally:
                await browser.close()
    assert stats.finished
    assert stats.written == 500
    assert shown == {
        "read": stats.read,
        "rejected": stats.rejected,
        "submitted": stats.submitted,
        "written": stats.written,
        "batches_submitted": stats.batches_submitted,
    }
    assert succeeded == stats.outcomes["succeeded"]
    assert errored == stats.outcomes["errored:api_error"] > 0
    assert state == "finished"
    (tmp_path / "job-page.png").write_bytes(shot)
    target = os.environ.get("PIPELINE_JOB_PAGE_SCREENSHOT")
    if target:
        Path(target).write_bytes(shot)
