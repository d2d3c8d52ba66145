"""Tier 3, in a real browser: the staff dashboard shows live figures from the server."""

from __future__ import annotations

import re
from contextlib import ExitStack

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from tests.conftest import ServerProcess, create_superuser, timeout

from .browser import chromium

pytestmark = pytest.mark.browser


def test_dashboard_requires_staff_and_shows_live_figures(server: ServerProcess) -> None:
    create_superuser(server, "ops")
    with ExitStack() as stack, chromium() as browser:
        subscribers = [
            stack.enter_context(connect(f"{server.ws_url}/ws/broadcast/busy-topic/"))
            for _ in range(3)
        ]
        page = browser.new_page()
        page.goto(f"{server.http_url}/megaphone/dashboard/")
        assert "/admin/login/" in page.url  # anonymous visitors are sent to log in
        page.fill("#id_username", "ops")
        page.fill("#id_password", "a-long-test-password")
        page.click("input[type=submit]")
        page.wait_for_url("**/megaphone/dashboard/", timeout=timeout(10_000))
        expect(page.locator("#status")).to_have_attribute(
            "data-state", "open", timeout=timeout(10_000)
        )
        expect(page.locator("#workers")).to_have_text(
            "1 worker(s) reporting", timeout=timeout(10_000)
        )
        # three subscribers here plus the page's own socket on the stats topic
        expect(page.locator("#connections")).to_have_text("4", timeout=timeout(10_000))
        row = page.locator("#busiest tr", has_text="busy-topic")
        expect(row).to_contain_text("3", timeout=timeout(10_000))
        subscribers[0].send("a message")
        expect(page.locator("#published-rate")).to_have_text(
            re.compile(r"^\d+\.\d$"), timeout=timeout(10_000)
        )
