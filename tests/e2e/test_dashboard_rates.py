"""Tier 3: the dashboard's rates on 2 workers over Redis match a known publish rate.

The test publishes at a steady, known rate (paced by the test's clock) on a topic with known
subscribers, and reads the stats frames the way the dashboard page does (megaphone.client, as a
staff user): the latest rates of every worker reporting, added up (dashboard-figures.js).
"""

from __future__ import annotations

import asyncio
import json
import statistics
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import websockets

from megaphone.client import Client, Message, Subscription
from megaphone.engine.stats import STATS_TOPIC
from tests.conftest import ROOT, ServerProcess, create_superuser, timeout
from tests.redis_server import RedisServer

from .test_logout import Browser

RATE = 20.0  # messages per second, published by the test
SECONDS = 8.0
SUBSCRIBERS = 6  # raw connections on the topic, each publishing in turn (and getting its own)
INTERVAL = 0.5  # DASHBOARD_INTERVAL


async def drain(socket: websockets.ClientConnection) -> None:
    async for _ in socket:
        pass


async def read_until(
    stats: Subscription, frames: list[dict[str, Any]], done: Callable[[], bool]
) -> None:
    """Read stats frames into ``frames`` until ``done()``."""
    while not done():
        message = await asyncio.wait_for(anext(stats), timeout(10))
        assert isinstance(message, Message)
        frames.append(json.loads(message.data))


async def publish_steadily(publishers: list[websockets.ClientConnection]) -> tuple[float, float]:
    """Send RATE messages per second for SECONDS, alternating publishers, on a fixed schedule;
    the wall-clock times of the first and the last."""
    count = int(RATE * SECONDS)
    start = time.monotonic()
    wall_start = time.time()
    for i in range(count):
        await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))
        await publishers[i % len(publishers)].send(f"message {i}")
    return wall_start, wall_start + (count - 1) / RATE


async def test_two_workers_rates_add_up_to_the_published_rate(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    overrides = {"BACKEND": redis_server.url, "DASHBOARD_INTERVAL": INTERVAL, "PUBLISH_RATE": 0}
    server = server_factory(
        workers=2,
        env={
            "DJANGO_SETTINGS_MODULE": "tests.e2e.hardening_settings",
            "PYTHONPATH": str(ROOT),
            "MEGAPHONE_OVERRIDES": json.dumps(overrides),
        },
    )
    create_superuser(server, "ops")
    browser = Browser(server)
    await asyncio.to_thread(browser.log_in, "ops")
    frames: list[dict[str, Any]] = []
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(
            Client(f"{server.ws_url}/ws/connect/", session_cookie=browser.cookie("sessionid"))
        )
        stats = await client.subscribe(STATS_TOPIC)
        sockets = [
            await stack.enter_async_context(
                websockets.connect(f"{server.ws_url}/ws/broadcast/rates/")
            )
            for _ in range(SUBSCRIBERS)
        ]
        drains = [asyncio.ensure_future(drain(socket)) for socket in sockets]
        # a worker's first snapshot comes one interval after it started: both report first
        await read_until(stats, frames, lambda: len({f["worker"] for f in frames}) == 2)
        first, last = await publish_steadily(sockets)
        # every snapshot up to the end of the publishing has come when each worker sent a later one
        await read_until(
            stats, frames, lambda: len({f["worker"] for f in frames if f["time"] > last}) == 2
        )
        for task in drains:
            task.cancel()

    samples = summed_rates(frames, first, last)
    assert len({frame["worker"] for frame in frames}) == 2
    assert len(samples) >= 5, samples
    published = statistics.median(s[0] for s in samples)
    delivered = statistics.median(s[1] for s in samples)
    assert abs(published - RATE) <= 0.1 * RATE, (published, samples)
    assert abs(delivered - RATE * SUBSCRIBERS) <= 0.1 * RATE * SUBSCRIBERS, (delivered, samples)


def summed_rates(
    frames: list[dict[str, Any]], first: float, last: float
) -> list[tuple[float, float]]:
    """(published/s, delivered/s) the page shows after each stats frame whose workers' latest
    rates all measure the steady publishing (their windows within ``first`` .. ``last``)."""
    latest: dict[str, dict[str, Any]] = {}
    samples = []
    for frame in frames:
        latest[frame["worker"]] = frame
        steady = [
            f
            for f in latest.values()
            if f["time"] - f["rate_window"] >= first and f["time"] <= last
        ]
        if len(latest) == 2 and len(steady) == 2:
            samples.append(
                (
                    sum(f["published_per_s"] for f in steady),
                    sum(f["delivered_per_s"] for f in steady),
                )
            )
    return samples
