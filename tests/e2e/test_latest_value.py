"""Tier 3: latest-value topics (``TOPICS`` option ``latest``): a new subscriber of the protocol
endpoint gets the topic's latest message first, before any live one, with or without ``since``;
two ``manage.py serve`` workers over a private Redis, publishers and subscribers on either."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from tests.conftest import ROOT, ServerProcess, timeout
from tests.protocol_clients import AsyncClient
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e


@pytest.fixture
def server(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> ServerProcess:
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.e2e.protocol_settings",  # price.*: latest
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_server.url,
    }
    return server_factory(workers=2, env=env)


async def connect(server: ServerProcess) -> AsyncClient:
    client = AsyncClient(await websockets.connect(f"{server.ws_url}/ws/connect/"))
    client.hello = await client.recv()
    return client


class Prices:
    """A publisher of increasing prices on a topic."""

    def __init__(self, publisher: AsyncClient, topic: str) -> None:
        self.publisher, self.topic, self.price = publisher, topic, 100

    async def next(self) -> int:
        self.price += 1
        await self.publisher.result(op="publish", topic=self.topic, data=self.price)
        return self.price

    async def subscribe(
        self, client: AsyncClient, **request: Any
    ) -> tuple[dict[str, Any], list[Any]]:
        """Subscribe ``client``; the reply's result, and the messages it got before the next
        live price (published right after the reply)."""
        result = await client.result(op="subscribe", topic=self.topic, **request)
        marker = await self.next()
        frames = []
        while (frame := await client.recv())["data"] != marker:
            frames.append((frame["offset"], frame["data"]))
        return result, frames


async def test_a_new_subscriber_gets_the_latest_message_first(server: ServerProcess) -> None:
    publisher = await connect(server)
    prices = Prices(publisher, f"price.{uuid.uuid4().hex[:8]}")
    plain = Prices(publisher, f"news.{uuid.uuid4().hex[:8]}")
    clients = [publisher]
    try:
        for _ in range(3):
            await prices.next()
            await plain.next()
        fresh = await connect(server)
        clients.append(fresh)
        result, frames = await prices.subscribe(fresh)
        assert result["offset"] == 2 and frames == [(3, 103)], (result, frames)
        # a topic without the option: nothing before live messages
        assert (await plain.subscribe(fresh))[1] == []
        epoch = result["epoch"]

        lost = await connect(server)  # a position from another epoch: nothing to recover
        clients.append(lost)
        result, frames = await prices.subscribe(lost, since={"offset": 1, "epoch": "x"})
        assert result["recovered"] is False and frames == [(4, 104)], (result, frames)
        behind = await connect(server)  # a recoverable position: the missed ones, latest last
        clients.append(behind)
        result, frames = await prices.subscribe(behind, since={"offset": 2, "epoch": epoch})
        assert result["recovered"] is True, result
        assert frames == [(3, 103), (4, 104), (5, 105)], frames
        current = await connect(server)  # up to date: nothing more
        clients.append(current)
        result, frames = await prices.subscribe(current, since={"offset": 6, "epoch": epoch})
        assert result["recovered"] is True and frames == [], (result, frames)
    finally:
        for client in clients:
            await client.close()


async def test_the_latest_then_every_live_message_while_publishing_goes_on(
    server: ServerProcess,
) -> None:
    topic = f"price.{uuid.uuid4().hex[:8]}"
    publisher, subscriber = await connect(server), await connect(server)
    await publisher.result(op="publish", topic=topic, data=0)

    midway = asyncio.Event()

    async def publish_on() -> None:
        for i in range(1, 200):
            await publisher.result(op="publish", topic=topic, data=i)
            if i == 50:
                midway.set()

    try:
        publishing = asyncio.ensure_future(publish_on())
        await midway.wait()
        result = await subscriber.result(op="subscribe", topic=topic)
        await publishing
        offsets = []
        while not offsets or offsets[-1] < 200:
            frame = await subscriber.recv()
            assert frame["type"] == "message", frame
            offsets.append(frame["offset"])
        # the latest first (the reply's offset is the one before it), then each later one once
        assert offsets == list(range(result["offset"] + 1, 201)), offsets
    finally:
        await publisher.close()
        await subscriber.close()


async def test_the_python_client_keeps_the_latest_message(server: ServerProcess) -> None:
    """megaphone.client takes the reply's offset as its position: the latest message after it is
    delivered, not dropped as a duplicate."""
    from megaphone.client import Client as PythonClient

    topic = f"price.{uuid.uuid4().hex[:8]}"
    publisher = await connect(server)
    try:
        for price in (101, 102):
            await publisher.result(op="publish", topic=topic, data=price)
        async with PythonClient(f"{server.ws_url}/ws/connect/") as client:
            prices = await client.subscribe(topic)
            iterator = aiter(prices)
            first = await asyncio.wait_for(anext(iterator), timeout(5))
            assert (first.offset, first.data) == (2, 102)
            await publisher.result(op="publish", topic=topic, data=103)
            live = await asyncio.wait_for(anext(iterator), timeout(5))
            assert (live.offset, live.data) == (3, 103)
    finally:
        await publisher.close()
