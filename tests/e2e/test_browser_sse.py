"""Tier 3, in a real browser: a native ``EventSource`` (no megaphone.js) on ``/sse/broadcast/``
receives what a WebSocket client publishes and, when the server restarts (SIGTERM: the stream
ends with a ``retry:`` hint), reconnects by itself with ``Last-Event-ID`` and gets every message
published while it was away (one while no server ran, through Redis), once, in order, with no
reset."""

from __future__ import annotations

import asyncio
import signal
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest
from playwright.sync_api import Page
from websockets.sync.client import connect

from megaphone.backends.redis import RedisBackend
from tests.conftest import ServerProcess, timeout
from tests.redis_server import RedisServer

from .browser import chromium
from .test_sse import SSE_SETTINGS_ENV

pytestmark = pytest.mark.browser

LISTEN = """topic => {
  window.received = [];
  window.resets = 0;
  window.opens = 0;
  const source = new EventSource(`/sse/broadcast/${topic}/`);
  source.onopen = () => { window.opens += 1; };
  source.onmessage = event => { window.received.push([event.lastEventId, event.data]); };
  source.addEventListener("reset", () => { window.resets += 1; });
}"""


def received(page: Page) -> list[list[str]]:
    return page.evaluate("window.received")  # type: ignore[no-any-return]


def wait_for(page: Page, script: str) -> None:
    page.wait_for_function(script, timeout=timeout(20_000))


def test_event_source_receives_and_resumes_after_a_server_restart(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    env = {**SSE_SETTINGS_ENV, "REDIS_URL": redis_server.url}
    server = server_factory(env=env)
    topic = f"broadcast.browser-{uuid.uuid4().hex[:8]}"
    url = f"{server.ws_url}/ws/broadcast/{topic}/"
    with chromium() as browser:
        page = browser.new_page()
        page.goto(f"{server.http_url}/healthz")  # any page of the site: same origin
        page.evaluate(LISTEN, topic)
        wait_for(page, "window.opens === 1")
        with connect(url) as wscat:
            wscat.send("before")
            assert wscat.recv(timeout(5)) == "before"
        wait_for(page, "window.received.length === 1")

        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout(15)) == -signal.SIGTERM
        # Playwright's sync API runs a loop in this thread: publish from another one.
        with ThreadPoolExecutor(1) as thread:
            down = thread.submit(
                lambda: asyncio.run(publish_directly(redis_server, topic, "while down"))
            )
            down.result(timeout(10))
        restarted = server_factory(port=server.port, env=env)
        with connect(url) as wscat:
            for text in ("after 1", "after 2"):
                wscat.send(text)
                assert wscat.recv(timeout(5)) == text
        wait_for(page, "window.received.length >= 4")
        assert page.evaluate("window.opens") >= 2  # it reconnected
        assert page.evaluate("window.resets") == 0  # resumed, not reset
        events = received(page)
        assert [data for _, data in events] == ["before", "while down", "after 1", "after 2"]
        epoch = events[0][0].split(":")[0]
        assert [event_id for event_id, _ in events] == [f"{epoch}:{n}" for n in (1, 2, 3, 4)]
        restarted.stop()


async def publish_directly(redis_server: RedisServer, topic: str, text: str) -> None:
    """Publish through Redis with no Megaphone server running, as another machine would."""
    publisher = RedisBackend(redis_server.url)
    await publisher.start(lambda message: None)
    try:
        await publisher.publish(topic, text)
    finally:
        await publisher.stop()
