"""Tier 3: 1,000 sync publish() calls in this process reach a real server's WebSocket client
through Redis, over a bounded number of Redis connections that are closed at shutdown."""

from __future__ import annotations

import asyncio
import importlib.util
import os
import threading
import uuid

import pytest
import websockets
from django.test import override_settings

import megaphone
from megaphone import publishing
from tests.conftest import ServerProcess, timeout

REDIS_URL = os.environ.get("MEGAPHONE_TEST_REDIS_URL", "redis://127.0.0.1:6379/13")


def redis_ready() -> bool:
    if importlib.util.find_spec("megaphone.backends.redis") is None:
        return False
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping()
    except redis.RedisError:
        return False
    return True


pytestmark = pytest.mark.skipif(not redis_ready(), reason="needs backends/redis.py and Redis")


def connections_on_our_db() -> int:
    """Clients of the shared Redis whose selected database is ours (other tests use others)."""
    import redis

    client = redis.Redis.from_url(REDIS_URL)
    db = str(client.connection_pool.connection_kwargs.get("db", 0))
    try:
        return sum(1 for c in client.client_list() if str(c.get("db")) == db) - 1  # minus us
    finally:
        client.close()


async def test_a_thousand_sync_publishes_reach_the_server_over_bounded_connections(
    server_factory,
) -> None:
    server: ServerProcess = server_factory(env={"REDIS_URL": REDIS_URL})
    topic = f"sync-redis-{uuid.uuid4().hex[:8]}"
    publishing.shutdown()  # start from no background publisher
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/") as client:
        await asyncio.sleep(timeout(0.3))  # the server has subscribed in Redis
        before = await asyncio.to_thread(connections_on_our_db)
        errors: list[BaseException] = []

        def publish_many(prefix: str, n: int) -> None:
            try:
                for i in range(n):
                    megaphone.publish(topic, f"{prefix}{i}")
            except BaseException as exc:
                errors.append(exc)

        with override_settings(MEGAPHONE={"BACKEND": REDIS_URL}):
            thread = threading.Thread(target=publish_many, args=("m", 1000))
            thread.start()
            received = [await asyncio.wait_for(client.recv(), timeout(10)) for _ in range(1000)]
            await asyncio.to_thread(thread.join)
            assert errors == [] and received == [f"m{i}" for i in range(1000)]
            during = await asyncio.to_thread(connections_on_our_db)

            threads = [
                threading.Thread(target=publish_many, args=(f"t{n}-", 20)) for n in range(10)
            ]
            for t in threads:
                t.start()
            more = [await asyncio.wait_for(client.recv(), timeout(10)) for _ in range(200)]
            for t in threads:
                await asyncio.to_thread(t.join)
            assert errors == [] and len(more) == 200
            assert await asyncio.to_thread(connections_on_our_db) == during

            await asyncio.to_thread(publishing.shutdown)
        # One backend for the process, whatever the number of calls and threads; none left after.
        assert during - before <= 3, (before, during)
        assert await asyncio.to_thread(connections_on_our_db) == before
