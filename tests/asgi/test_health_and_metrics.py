"""Tier 2: /healthz, /readyz and /metrics, with figures that match what the test did."""

from __future__ import annotations

import re

import pytest
from channels.testing import WebsocketCommunicator
from django.test import AsyncClient

from example.asgi import application
from megaphone.backends import BackendUnavailable
from megaphone.engine.node import get_node
from megaphone.testing import unique

pytestmark = pytest.mark.django_db


def sample(text: str, name: str) -> float:
    match = re.search(rf"^{re.escape(name)} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert match, f"{name} not in /metrics"
    return float(match.group(1))


async def scrape() -> str:
    response = await AsyncClient().get("/metrics")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain")
    return response.content.decode()


async def test_healthz_and_readyz() -> None:
    client = AsyncClient()
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    response = await client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ready", "backend": "MemoryBackend"}
    assert (await client.post("/healthz")).status_code == 405


async def test_readyz_is_503_when_the_backend_does_not_answer(monkeypatch) -> None:
    node = await get_node()

    async def unreachable() -> None:
        raise BackendUnavailable("connection refused")

    monkeypatch.setattr(node.backend, "ping", unreachable)
    response = await AsyncClient().get("/readyz")
    assert response.status_code == 503
    assert response.json() == {"status": "unavailable", "reason": "connection refused"}


async def test_metrics_count_connections_messages_and_deliveries() -> None:
    topic = unique("metrics")
    before = await scrape()
    clients = []
    for _ in range(3):
        client = WebsocketCommunicator(application, f"/ws/broadcast/{topic}/")
        assert (await client.connect())[0]
        clients.append(client)
    for i in range(4):
        await clients[0].send_to(text_data=f"m{i}")
    for client in clients:
        for i in range(4):
            assert await client.receive_from() == f"m{i}"
    during = await scrape()

    def grew(name: str) -> float:
        return sample(during, name) - sample(before, name)

    assert grew("megaphone_connections") == 3
    assert grew("megaphone_connections_accepted_total") == 3
    assert grew("megaphone_messages_published_total") == 4
    assert grew("megaphone_deliveries_total") == 12
    assert grew("megaphone_publish_to_send_seconds_count") == 4
    assert sample(during, "megaphone_topics") >= 1
    for client in clients:
        await client.disconnect()
    after = await scrape()
    assert sample(after, "megaphone_connections") == sample(before, "megaphone_connections")
