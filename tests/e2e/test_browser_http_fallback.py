"""Tier 3, in a real browser: where a proxy refuses WebSocket upgrades, the demo page falls back to
the HTTP transport by itself (``/sse/connect/``), shows live messages, publishes, and when the
proxy cuts its stream, reconnects and shows every message it missed once, in order; with one
server, and with two behind a round-robin proxy (no sticky sessions: its POSTs reach either)."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
from playwright.sync_api import Page, expect
from websockets.sync.client import connect

from tests.conftest import ServerProcess, timeout
from tests.http_only_proxy import HttpOnlyProxy
from tests.redis_server import RedisServer

from .browser import chromium
from .test_browser_recovery import offsets, shown
from .test_sse import SSE_SETTINGS_ENV

pytestmark = pytest.mark.browser


def wait_open(page: Page) -> None:
    expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=timeout(10_000))


def run_the_page(proxy: HttpOnlyProxy, servers: list[ServerProcess]) -> None:
    tag = uuid.uuid4().hex[:6]
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"http://127.0.0.1:{proxy.port}/")
        wait_open(page)
        expect(page.locator("#transport")).to_have_text("http")
        assert proxy.refused_upgrades >= 1
        with connect(f"{servers[0].ws_url}/ws/broadcast/") as wscat:
            wscat.send(f"live {tag}")
            assert wscat.recv(timeout(5)) == f"live {tag}"
        expect(page.locator("#messages")).to_contain_text(f"live {tag}", timeout=timeout(5_000))
        page.fill("#message", f"typed {tag}")
        page.press("#message", "Enter")
        expect(page.locator("#messages")).to_contain_text(f"typed {tag}", timeout=timeout(5_000))

        proxy.hold()
        proxy.cut_streams()
        expect(page.locator("#status")).not_to_have_attribute("data-state", "open")
        missed = [f"missed {i} {tag}" for i in range(3)]
        with connect(f"{servers[-1].ws_url}/ws/broadcast/") as wscat:
            for text in missed:
                wscat.send(text)
                assert wscat.recv(timeout(5)) == text
        proxy.release()
        wait_open(page)
        expect(page.locator("#transport")).to_have_text("http")
        expect(page.locator("#messages")).to_contain_text(missed[-1], timeout=timeout(10_000))
        expect(page.locator("#notice")).to_contain_text("recovered 3 messages")
        texts = [t for t in shown(page) if t.endswith(tag)]
        assert texts == [f"live {tag}", f"typed {tag}", *missed]
        numbers = offsets(page)
        assert numbers == sorted(set(numbers))  # once each, in order


def test_the_page_falls_back_to_http_where_websockets_are_refused(server: ServerProcess) -> None:
    proxy = HttpOnlyProxy([server.port])
    try:
        run_the_page(proxy, [server])
    finally:
        proxy.close()


def test_two_servers_behind_a_round_robin_proxy(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    env = {**SSE_SETTINGS_ENV, "REDIS_URL": redis_server.url}
    servers = [server_factory(env=env), server_factory(env=env)]
    proxy = HttpOnlyProxy([s.port for s in servers])
    try:
        run_the_page(proxy, servers)
        posts = {port for port, line in proxy.forwarded if line.startswith("POST /sse/connect/")}
        assert posts == {s.port for s in servers}  # its POSTs reached both
    finally:
        proxy.close()
