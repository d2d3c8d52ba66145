"""Class 9: the JS client must calm failures down, not amplify them (docs/clients.md).

A page publishes a message over ``MAX_MESSAGE_SIZE``. The server closes the connection with 1009.
megaphone.js used to reconnect at once and send the same frame again, forever (15 reconnections
in 5 s), while the publish's promise never settled. Now the publish is rejected with 1009, the
page reconnects once, and the frame is never sent again.
"""

from __future__ import annotations

import re
import urllib.request

import pytest
from playwright.sync_api import Page, expect

from tests.conftest import ServerProcess, timeout
from tests.e2e.browser import chromium

from .conftest import Start

pytestmark = pytest.mark.browser

LIMIT = 4096
NOTICES = """() => {
  const notice = document.getElementById("notice");
  window.notices = [];
  new MutationObserver(() => window.notices.push(notice.textContent))
    .observe(notice, { childList: true, characterData: true, subtree: true });
}"""


def connections_accepted(server: ServerProcess) -> float:
    """The server's count of WebSocket handshakes accepted, from /metrics."""
    with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=timeout(5)) as response:
        metrics = response.read().decode()
    match = re.search(r"^megaphone_connections_accepted_total (\S+)$", metrics, re.MULTILINE)
    assert match is not None, "megaphone_connections_accepted_total is not in /metrics"
    return float(match.group(1))


def send(page: Page, text: str) -> None:
    page.locator("#message").fill(text)
    page.locator("#message").press("Enter")


def test_a_publish_closed_with_1009_is_rejected_and_not_sent_again(attacked: Start) -> None:
    server = attacked(MAX_MESSAGE_SIZE=LIMIT)
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{server.http_url}/")
        status = page.locator("#status")
        expect(status).to_have_attribute("data-state", "open", timeout=timeout(10_000))
        # Subscribed once the page has asked for presence.
        expect(page.locator("#presence")).to_have_attribute(
            "data-count", re.compile(r"^[1-9]"), timeout=timeout(10_000)
        )
        assert connections_accepted(server) == 1
        # Every notice the page shows, in order (the one after the reconnection replaces it).
        page.evaluate(NOTICES)

        send(page, "x" * (2 * LIMIT))
        # The publish's promise rejects with the close code (the page shows why).
        rejected = "window.notices.some((text) => /^not sent: .*1009/.test(text))"
        page.wait_for_function(f"() => {rejected}", timeout=timeout(10_000))
        expect(status).to_have_attribute("data-state", "open", timeout=timeout(10_000))

        # A publish after the reconnection goes through: the oversize frame was not sent again
        # before it (the old client sent it first on every connection, and was closed again).
        send(page, "after the refusal")
        expect(page.locator("#messages")).to_contain_text(
            "after the refusal", timeout=timeout(10_000)
        )
        assert connections_accepted(server) == 2  # one reconnection, no loop
        assert page.locator("#messages li").count() == 1  # the oversize message never got in
