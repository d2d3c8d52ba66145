"""Tier 3, in a real browser: two tabs of the demo page and a script client share `broadcast`."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect
from websockets.sync.client import connect

from tests.conftest import ServerProcess, timeout

from .browser import chromium

pytestmark = pytest.mark.browser


def open_demo(page: Page, server: ServerProcess) -> None:
    """Open the demo page and wait until it is subscribed: "connected" comes first, and a
    message published before the subscription is not the page's to show."""
    page.goto(f"{server.http_url}/")
    expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=timeout(10_000))
    # The page asks for presence once its subscription is confirmed.
    expect(page.locator("#presence")).to_have_attribute(
        "data-count", re.compile(r"^[1-9]"), timeout=timeout(10_000)
    )


def send(page: Page, text: str) -> None:
    page.locator("#message").fill(text)
    page.locator("#message").press("Enter")


def test_two_tabs_and_a_script_client_see_each_others_messages(server: ServerProcess) -> None:
    with chromium() as browser, connect(f"{server.ws_url}/ws/broadcast/") as script:
        context = browser.new_context()
        first, second = context.new_page(), context.new_page()
        open_demo(first, server)
        open_demo(second, server)

        send(first, "typed in the first tab")
        for page in (first, second):
            expect(page.locator("#messages")).to_contain_text(
                "typed in the first tab", timeout=timeout(5_000)
            )
        assert script.recv(timeout(5)) == "typed in the first tab"

        script.send("sent by a script")
        for page in (first, second):
            expect(page.locator("#messages")).to_contain_text(
                "sent by a script", timeout=timeout(5_000)
            )


def test_markup_in_a_message_is_shown_as_text(server: ServerProcess) -> None:
    with chromium() as browser, connect(f"{server.ws_url}/ws/broadcast/") as script:
        page = browser.new_page()
        dialogs: list[str] = []
        page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))
        open_demo(page, server)
        payload = '<img src=x onerror="alert(1)"><script>alert(2)</script>'
        script.send(payload)
        expect(page.locator("#messages")).to_contain_text(payload, timeout=timeout(5_000))
        assert page.locator("#messages img, #messages script").count() == 0
        assert dialogs == []
