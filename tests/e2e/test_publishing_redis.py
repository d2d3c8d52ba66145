"""Tier 3: 1,000 sync publish() calls in this process reach a real server's WebSocket client
through Redis, over a bounded number of Redis connections that are closed at shutdown."""

from __future__ import annotations

import asyncio
import threading

import websockets
from django.test import override_settings

import megaphone
from megaphone.backends.redis import MAX_CONNECTIONS
from megaphone.engine import publishing
from megaphone.testing import unique
from tests.conftest import ServerProcess, timeout
from tests.redis_server import RedisServer


def connections(redis_server: RedisServer) -> int:
    """Clients of the test's own Redis, minus the one asking."""
    with redis_server.client() as client:
        return len(client.client_list()) - 1


async def test_a_thousand_sync_publishes_reach_the_server_over_bounded_connections(
    server_factory, redis_server: RedisServer
) -> None:
    server: ServerProcess = server_factory(env={"REDIS_URL": redis_server.url})
    topic = unique("sync-redis")
    publishing.shutdown()  # start from no background publisher
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/") as client:
        # Connected: the server has subscribed in Redis (it accepts only once subscribed).
        before = await asyncio.to_thread(connections, redis_server)
        errors: list[BaseException] = []

        def publish_many(prefix: str, n: int) -> None:
            try:
                for i in range(n):
                    megaphone.publish(topic, f"{prefix}{i}")
            except BaseException as exc:
                errors.append(exc)

        with override_settings(MEGAPHONE={"BACKEND": redis_server.url}):
            thread = threading.Thread(target=publish_many, args=("m", 1000))
            thread.start()
            received = [await asyncio.wait_for(client.recv(), timeout(10)) for _ in range(1000)]
            await asyncio.to_thread(thread.join)
            assert errors == [] and received == [f"m{i}" for i in range(1000)]
            during = await asyncio.to_thread(connections, redis_server)

            threads = [
                threading.Thread(target=publish_many, args=(f"t{n}-", 20)) for n in range(10)
            ]
            for t in threads:
                t.start()
            more = [await asyncio.wait_for(client.recv(), timeout(10)) for _ in range(200)]
            for t in threads:
                await asyncio.to_thread(t.join)
            assert errors == [] and len(more) == 200
            # Concurrent publishes may open more pooled connections, never past the pool's bound.
            after_threads = await asyncio.to_thread(connections, redis_server)
            assert during <= after_threads <= during + MAX_CONNECTIONS

            await asyncio.to_thread(publishing.shutdown)
        # One backend for the process, whatever the number of calls and threads; none left after.
        assert during - before <= 3, (before, during)
        assert await asyncio.to_thread(connections, redis_server) == before
