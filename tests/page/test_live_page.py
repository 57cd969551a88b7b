"""The live page at ``/`` in a real headless Chromium (Debian's ``chromium``, driven by Playwright): it
shows the device, its groups and sessions, and a fault switched on from the page appears in the
trace table once a real CoAP request hits it. Fails if the page cannot show a fault in the trace."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path

import aiocoap
import httpx
import pytest

from tap_emulator.testing import EmulatedTap

CHROMIUM = os.environ.get("TAP_EMULATOR_CHROMIUM", "/usr/bin/chromium")
TIMEOUT_MS = 10_000


def require_browser() -> None:
    reason = None
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        reason = "the Python package playwright is not installed (pip install '.[test]')"
    if reason is None and shutil.which(CHROMIUM) is None:
        reason = f"no Chromium at {CHROMIUM} (apt-get install chromium)"
    if reason is None:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(reason, pytrace=False)
    pytest.skip(reason)


async def test_the_page_shows_a_fault_clicked_on_in_the_trace(tmp_path: Path) -> None:
    require_browser()
    from playwright.async_api import async_playwright, expect

    async with EmulatedTap(faces=("coap", "tcp", "http"), state=tmp_path / "d.sqlite3") as tap:
        async with httpx.AsyncClient(base_url=tap.http_url) as http:
            page_html = await http.get("/")
            assert page_html.status_code == 200 and "https://" not in page_html.text  # nothing from a CDN
            assert (await http.get("/page/page.js")).status_code == 200
        async with async_playwright() as playwright:
            browser = await playwright.chromium.launch(
                executable_path=CHROMIUM, headless=True, args=["--no-sandbox", "--disable-gpu"]
            )
            try:
                page = await browser.new_page()
                errors: list[str] = []
                page.on("pageerror", lambda error: errors.append(str(error)))
                await page.goto(tap.http_url + "/")
                await expect(page.locator("#serial")).to_have_text(tap.serial, timeout=TIMEOUT_MS)
                await expect(page.locator("#connection")).to_have_text("live", timeout=TIMEOUT_MS)
                await expect(page.locator("#groups tbody")).to_contain_text("supervisor", timeout=TIMEOUT_MS)
                # Click a fault on: 5.03 for CoAP requests to /3/*.
                await page.select_option("#fault-face", "coap")
                await page.fill("#fault-path", "/3/*")
                await page.fill("#fault-status", "5.03")
                await page.click("#fault-apply")
                await expect(page.locator("#action-result")).to_have_text(
                    "fault plan applied", timeout=TIMEOUT_MS
                )
                assert tap.info is not None and (await tap.info())["faults_active"]
                context = await aiocoap.Context.create_client_context()
                try:
                    message = aiocoap.Message(code=aiocoap.GET, uri=tap.coap_uri + "/3//0")
                    answer = await asyncio.wait_for(context.request(message).response, 5)
                finally:
                    await context.shutdown()
                assert str(answer.code).startswith("5.03")
                fault_row = page.locator("#trace tbody tr.fault").first
                await expect(fault_row).to_contain_text("status 5.03", timeout=TIMEOUT_MS)
                await expect(fault_row).to_contain_text("/3//0")
                # And off again from the page.
                await page.click("#fault-clear")
                await expect(page.locator("#action-result")).to_have_text(
                    "faults cleared", timeout=TIMEOUT_MS
                )
                assert not (await tap.info())["faults_active"]
                assert errors == []
            finally:
                await browser.close()
