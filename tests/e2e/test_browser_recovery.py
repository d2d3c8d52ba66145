"""Tier 3, in a real browser: the demo page (megaphone.js) survives losing its connection.

The page reaches the server through a TCP proxy that the test can cut (every connection reset,
new ones refused) and restore, which is what a network cut looks like to the browser. Messages
published meanwhile must appear once each, in order, after the page reconnects by itself.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect
from websockets.sync.client import connect

from tests.conftest import ServerProcess, timeout

from .browser import chromium
from .proxy import CuttableProxy

pytestmark = pytest.mark.browser


def status(page: Page) -> str:
    return page.locator("#status").get_attribute("data-state") or ""


def shown(page: Page) -> list[str]:
    """Message texts as shown, oldest first (the page lists newest first)."""
    texts = page.locator("#messages li").evaluate_all(
        "items => items.map(li => li.lastChild.textContent)"
    )
    return list(reversed(texts))


def offsets(page: Page) -> list[int]:
    script = "items => items.map(li => li.dataset.offset)"
    values = page.locator("#messages li").evaluate_all(script)
    return [int(v) for v in reversed(values)]


def test_page_reconnects_after_a_network_cut_and_shows_every_missed_message_once(
    server: ServerProcess,
) -> None:
    proxy = CuttableProxy(server.port)
    try:
        with chromium() as browser, connect(f"{server.ws_url}/ws/broadcast/") as wscat:
            page = browser.new_page()
            page.goto(f"http://127.0.0.1:{proxy.port}/")
            expect(page.locator("#status")).to_have_attribute(
                "data-state", "open", timeout=timeout(10_000)
            )
            expect(page.locator("#presence")).to_contain_text("1 online", timeout=timeout(5_000))
            wscat.send("before the cut")
            expect(page.locator("#messages")).to_contain_text(
                "before the cut", timeout=timeout(5_000)
            )

            proxy.cut()
            expect(page.locator("#status")).to_have_attribute(
                "data-state", "closed", timeout=timeout(5_000)
            )
            missed = [f"missed {i}" for i in range(10)]
            for text in missed:
                wscat.send(text)
            # The sender gets its own messages back: once it has, they all have their offsets.
            echoed = [wscat.recv(timeout(5)) for _ in range(1 + len(missed))]
            assert echoed == ["before the cut", *missed]
            with connect(f"{server.ws_url}/ws/connect/") as protocol_client:
                protocol_client.recv(timeout(5))
                publish = {"op": "publish", "id": 1, "topic": "broadcast", "data": {"json": 1}}
                protocol_client.send(json.dumps(publish))
                while json.loads(protocol_client.recv(timeout(5))).get("id") != 1:
                    pass
            time.sleep(0.5)  # the page retries against the dead network meanwhile

            proxy.restore()
            expect(page.locator("#status")).to_have_attribute(
                "data-state", "open", timeout=timeout(15_000)
            )
            expect(page.locator("#notice")).to_have_text(
                "recovered 11 messages", timeout=timeout(5_000)
            )
            wscat.send("after the cut")
            expect(page.locator("#messages")).to_contain_text(
                "after the cut", timeout=timeout(5_000)
            )
            assert shown(page) == ["before the cut", *missed, '{"json":1}', "after the cut"]
            got = offsets(page)
            assert got == list(range(got[0], got[0] + 13))  # in order, no gap, no duplicate
    finally:
        proxy.close()


def test_page_says_so_when_a_server_restart_lost_the_history(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """The server restarts (close 1012, memory history gone, new epoch): loss is never silent."""
    server = server_factory()
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{server.http_url}/")
        expect(page.locator("#status")).to_have_attribute(
            "data-state", "open", timeout=timeout(10_000)
        )
        with connect(f"{server.ws_url}/ws/broadcast/") as wscat:
            wscat.send("first life")
        expect(page.locator("#messages")).to_contain_text("first life", timeout=timeout(5_000))
        server.stop()
        expect(page.locator("#status")).to_have_attribute(
            "data-state", "closed", timeout=timeout(5_000)
        )
        restarted = server_factory(port=server.port)
        expect(page.locator("#notice")).to_have_text(
            "some messages were missed and could not be recovered", timeout=timeout(20_000)
        )
        expect(page.locator("#status")).to_have_attribute("data-state", "open")
        with connect(f"{restarted.ws_url}/ws/broadcast/") as wscat:
            wscat.send("second life")
        expect(page.locator("#messages")).to_contain_text("second life", timeout=timeout(5_000))
