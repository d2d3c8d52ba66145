"""Tier 3: a server stopped with SIGTERM tells its clients 1012 (service restart) and exits; on
Redis, its clients come back to the restarted server and lose nothing."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from megaphone.backends.redis import RedisBackend
from tests.conftest import ServerProcess, timeout
from tests.redis_server import RedisServer

from .test_redis_scaleout import close_all, followers, start, unique


async def test_sigterm_closes_every_client_with_1012(server: ServerProcess) -> None:
    url = f"{server.ws_url}/ws/broadcast/shutdown/"
    clients = [await websockets.connect(url) for _ in range(5)]
    await clients[0].send("before")
    for client in clients:
        assert await asyncio.wait_for(client.recv(), timeout(5)) == "before"

    server.process.send_signal(signal.SIGTERM)
    for client in clients:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), timeout(10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells why.
    returncode = await asyncio.to_thread(server.process.wait, timeout(15))
    assert returncode == -signal.SIGTERM
    assert "Finished server process" in server.log()


async def test_sigterm_mid_stream_then_restart_loses_no_acknowledged_message(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    """Clients get 1012, reconnect by themselves to the restarted server, and recover every
    message acknowledged before, during and after the restart, once, in order."""
    server = start(server_factory, redis_server, 1)
    topic = unique("restart")
    clients = await followers(server, topic, 20)
    publisher = RedisBackend(redis_server.url)  # another machine's publisher: keeps going
    await publisher.start(lambda m: None)
    acknowledged: list[int] = []

    async def publish(n: int) -> None:
        for _ in range(n):
            message = await publisher.publish(topic, str(len(acknowledged)), json=True)
            acknowledged.append(message.offset)
            await asyncio.sleep(0.005)

    try:
        following = [
            asyncio.ensure_future(c.follow(lambda c: c.offsets()[-1:] == [300], 60))
            for c in clients
        ]
        await publish(100)
        server.process.send_signal(signal.SIGTERM)
        assert await asyncio.to_thread(server.process.wait, timeout(15)) == -signal.SIGTERM
        await publish(100)  # while no server runs
        server_factory(port=server.port, env=server.env)  # the restarted server
        await publish(100)
        await asyncio.gather(*following)

        assert acknowledged == list(range(1, 301))
        for client in clients:
            assert client.close_codes == [1012]
            assert client.offsets() == acknowledged  # no gap, no duplicate, in order
            assert [data for _, _, data in client.received] == list(range(300))
            assert client.results[-1]["recovered"] is True
    finally:
        await publisher.stop()
        await close_all(clients)
