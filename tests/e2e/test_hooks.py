"""Tier 3: the client_publish signal (megaphone.server.hooks) on a real ``manage.py serve``: a
receiver refuses a message with its own error code, which the protocol client gets (the raw client
is closed with 4403), or replaces it; topics it does not touch are unchanged."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import ROOT, ServerProcess, timeout
from tests.protocol_clients import AsyncClient
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ENV = {"DJANGO_SETTINGS_MODULE": "tests.e2e.django_settings", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(env=ENV)


async def test_a_receiver_rejects_with_its_code_or_transforms(server: ServerProcess) -> None:
    topic = f"moderated.{uuid.uuid4().hex[:8]}"
    client = AsyncClient(await websockets.connect(f"{server.ws_url}/ws/connect/"))
    client.hello = await client.recv()
    try:
        await client.result(op="subscribe", topic=topic)
        request_id = await client.send(op="publish", topic=topic, data="buy spam now")
        error = await client.recv()
        assert error == {
            "type": "error",
            "id": request_id,
            "code": "spam",
            "message": "no spam here",
        }, error
        for sent, published in (("hello", "HELLO"), ({"n": 1}, {"n": 1, "checked": True})):
            await client.send(op="publish", topic=topic, data=sent)
            frames = [await client.recv(), await client.recv()]  # reply and message, any order
            [message] = [f for f in frames if f["type"] == "message"]
            assert message["data"] == published, frames
        history = await client.result(op="history", topic=topic)
        assert [m["data"] for m in history["messages"]] == ["HELLO", {"n": 1, "checked": True}]
    finally:
        await client.close()


async def test_the_raw_endpoint_goes_through_the_same_hook(server: ServerProcess) -> None:
    url = f"{server.ws_url}/ws/broadcast/moderated.{uuid.uuid4().hex[:8]}/"
    async with websockets.connect(url) as raw:
        await raw.send("quiet")
        assert await raw.recv(timeout(5)) == "QUIET"
        await raw.send("spam")
        with pytest.raises(ConnectionClosed) as closed:
            await raw.recv(timeout(5))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/plain/") as untouched:
        await untouched.send("spam is fine here")
        assert await untouched.recv(timeout(5)) == "spam is fine here"


async def test_presence_signals_once_per_event_across_two_workers(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    log = tmp_path / "presence.log"
    env = {**ENV, "REDIS_URL": redis_server.url, "MEGAPHONE_TEST_PRESENCE_LOG": str(log)}
    server = server_factory(workers=2, env=env)
    topic = f"room.{uuid.uuid4().hex[:8]}"
    clients = await subscribed_clients(server, topic, 6)
    ids = sorted(client.hello["client"] for client in clients)
    presence = await clients[0].result(op="presence", topic=topic)
    assert presence["count"] == 6
    await clients[0].result(op="unsubscribe", topic=topic)
    for client in clients:
        await client.close()
    deadline = time.monotonic() + timeout(10)
    while len(lines := read(log)) < 12:
        assert time.monotonic() < deadline, lines
        await asyncio.sleep(0.05)
    events = sorted((kind, client) for kind, logged, client, _ in lines if logged == topic)
    assert events == sorted([("join", c) for c in ids] + [("leave", c) for c in ids]), events
    print(f"\nworkers that sent signals: {len({pid for *_, pid in lines})}")


async def subscribed_clients(server: ServerProcess, topic: str, n: int) -> list[AsyncClient]:
    """``n`` protocol clients subscribed to ``topic``, spread over the workers by the kernel."""
    clients = []
    for _ in range(n):
        client = AsyncClient(await websockets.connect(f"{server.ws_url}/ws/connect/"))
        client.hello = await client.recv()
        await client.result(op="subscribe", topic=topic)
        clients.append(client)
    return clients


def read(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


async def test_occupied_and_vacated_are_sent_once_per_change_across_two_workers(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer, tmp_path: Path
) -> None:
    log = tmp_path / "occupancy.log"
    env = {**ENV, "REDIS_URL": redis_server.url, "MEGAPHONE_TEST_OCCUPANCY_LOG": str(log)}
    server = server_factory(workers=2, env=env)
    topic, marker = f"room.{uuid.uuid4().hex[:8]}", f"room.{uuid.uuid4().hex[:8]}"
    clients = await subscribed_clients(server, topic, 6)
    for _ in range(3):  # a flap on one connection: debounced, it changes nothing
        await clients[0].result(op="unsubscribe", topic=topic)
        await clients[0].result(op="subscribe", topic=topic)
    await wait_for_line(log, f"occupied {topic}")
    for client in clients:
        await client.close()
    await wait_for_line(log, f"vacated {topic}")
    # A later change, behind any late announcement of the first topic's (each worker settles
    # its topics in the order of their changes, after the same debounce).
    [last] = await subscribed_clients(server, marker, 1)
    await wait_for_line(log, f"occupied {marker}")
    await last.close()
    events = [kind for kind, logged, _ in read(log) if logged == topic]
    assert events == ["occupied", "vacated"], read(log)
    print(f"\nworkers that announced: {len({pid for *_, pid in read(log)})}")


async def wait_for_line(path: Path, start: str) -> None:
    deadline = time.monotonic() + timeout(10)
    while not any(line.startswith(start) for line in map(" ".join, read(path))):
        assert time.monotonic() < deadline, read(path)
        await asyncio.sleep(0.05)
