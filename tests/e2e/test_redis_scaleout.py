"""Tier 3: several ``manage.py serve --workers N`` processes over a private Redis.

Protocol clients spread over the workers receive every message once, in offset order, with one
Redis PUBLISH per message; a Redis outage makes publishing fail loudly and ends in recovery or an
explicit ``recovered: false``; a killed worker's clients recover with ``since`` while the other
workers' clients see no gap; 4,000 connections at once are all accepted.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from megaphone.backends.redis import RedisBackend
from megaphone.testing import unique
from tests.conftest import ROOT, ServerProcess, timeout
from tests.protocol_clients import AsyncClient
from tests.redis_server import RedisServer

REDIS_SETTINGS_ENV = {"DJANGO_SETTINGS_MODULE": "tests.e2e.redis_settings", "PYTHONPATH": str(ROOT)}


def start(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer, workers: int
) -> ServerProcess:
    return server_factory(
        workers=workers, env={**REDIS_SETTINGS_ENV, "REDIS_URL": redis_server.url}
    )


def workers_subscribed(redis_server: RedisServer, topic: str) -> int:
    """How many processes subscribed ``topic`` in Redis (each worker does once, if it has any
    subscriber of it)."""
    with redis_server.client() as client:
        return int(client.pubsub_numsub(f"megaphone:0:{{{topic}}}")[0][1])


def worker_pids(server: ServerProcess) -> list[int]:
    """The uvicorn worker processes of ``server`` (children running multiprocessing's spawn)."""
    pids = []
    for task in Path(f"/proc/{server.process.pid}/task").iterdir():
        for pid in (task / "children").read_text().split():
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
            if b"spawn_main" in cmdline:
                pids.append(int(pid))
    return pids


async def gather_limited(n: int, factory: Callable[[int], Any], limit: int = 100) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(i: int) -> Any:
        async with semaphore:
            return await factory(i)

    # Every call ends before an error goes up: none is left running behind the caller's cleanup.
    results = await asyncio.gather(*(one(i) for i in range(n)), return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
    return results


class Follower:
    """A protocol client following one topic like megaphone.js does: on ``unsubscribed`` or a
    lost connection it subscribes again with ``since`` = the last message it got."""

    def __init__(self, server: ServerProcess, topic: str) -> None:
        self.server = server
        self.topic = topic
        self.client: AsyncClient | None = None
        self.received: list[tuple[str, int, Any]] = []  # (epoch, offset, data)
        self.position: dict[str, Any] | None = None
        self.results: list[dict[str, Any]] = []  # subscribe replies
        self.reconnects = 0
        self.close_codes: list[int | None] = []  # the server's close code, per lost connection

    async def subscribe(self) -> None:
        if self.client is None:
            self.client = await AsyncClient.open(self.server)
        request: dict[str, Any] = {"op": "subscribe", "topic": self.topic}
        if self.position is not None:
            request["since"] = self.position
        self.results.append(await self.client.result(**request))

    def offsets(self, epoch: str | None = None) -> list[int]:
        return [offset for e, offset, _ in self.received if epoch is None or e == epoch]

    async def follow(self, done: Callable[[Follower], bool], seconds: float) -> None:
        """Receive until ``done(self)``; fail after ``seconds``."""
        try:
            async with asyncio.timeout(timeout(seconds)):
                while not done(self):
                    await self._next()
        except TimeoutError:
            raise AssertionError(
                f"gave up after {len(self.received)} messages: {self.results}"
            ) from None

    async def _next(self) -> None:
        assert self.client is not None
        try:
            frame = json.loads(await self.client.ws.recv())
        except ConnectionClosed as closed:
            self.reconnects += 1
            self.close_codes.append(closed.rcvd.code if closed.rcvd else None)
            self.client = None
            while True:  # the server may be restarting its worker
                try:
                    await self.subscribe()
                    return
                except (OSError, ConnectionClosed, websockets.InvalidStatus):
                    await asyncio.sleep(0.05)
        if frame["type"] == "message":
            self.received.append((frame["epoch"], frame["offset"], frame["data"]))
            self.position = {"offset": frame["offset"], "epoch": frame["epoch"]}
        elif frame["type"] == "unsubscribed":
            assert frame["code"] == "insufficient_state", frame
            self.position = {"offset": frame["offset"], "epoch": frame["epoch"]}
            await self.subscribe()
        else:
            raise AssertionError(f"unexpected frame {frame}")

    async def close(self) -> None:
        if self.client is not None:
            await self.client.close()


async def followers(server: ServerProcess, topic: str | list[str], n: int) -> list[Follower]:
    """``n`` subscribed followers (of ``topic``, or of each of the ``topic`` list in turn); if
    one fails, every one opened is closed before the error goes up (no socket left for a later
    test's garbage collection to warn about)."""
    topics = [topic] if isinstance(topic, str) else topic
    clients = [Follower(server, topics[i % len(topics)]) for i in range(n)]
    try:
        await gather_limited(n, lambda i: clients[i].subscribe(), limit=50)
    except BaseException:
        await close_all(clients)
        raise
    return clients


async def close_all(clients: list[Follower]) -> None:
    await asyncio.gather(*(c.close() for c in clients))


async def publish_pipelined(
    publisher: AsyncClient, topic: str, n: int, start: int = 0
) -> list[int]:
    """Send ``n`` publishes back to back, then read the ``n`` replies; return the offsets."""
    for i in range(start, start + n):
        await publisher.send(op="publish", topic=topic, data={"n": i})
    offsets = []
    for _ in range(n):
        answer = await publisher.recv(10)
        assert answer["type"] == "reply", answer
        offsets.append(answer["result"]["offset"])
    return offsets


@pytest.mark.parametrize("workers", [2, 4])
async def test_every_client_of_every_worker_gets_every_message_once_in_order(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer, workers: int
) -> None:
    server = start(server_factory, redis_server, workers)
    topic = unique("scale")
    clients = await followers(server, topic, 200)
    publisher = await AsyncClient.open(server)
    try:
        spread = workers_subscribed(redis_server, topic)
        assert 2 <= spread <= workers  # more than one worker serves the 200 clients
        publishes_before = redis_server.command_calls("publish")

        offsets = await publish_pipelined(publisher, topic, 1000)
        assert offsets == list(range(1, 1001))
        await asyncio.gather(*(c.follow(lambda c: len(c.received) >= 1000, 60) for c in clients))

        epoch = clients[0].received[0][0]
        for client in clients:
            assert client.received == [(epoch, i + 1, {"n": i}) for i in range(1000)]
        # One PUBLISH per message, whatever the number of workers and clients.
        assert redis_server.command_calls("publish") - publishes_before == 1000
    finally:
        await publisher.close()
        await close_all(clients)


def http_publish(server: ServerProcess, topic: str, data: str) -> tuple[int, dict[str, Any]]:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout(15))
    try:
        body = json.dumps({"topic": topic, "data": data})
        headers = {
            "Authorization": "Bearer test-key-0123456789abcdef",
            "Content-Type": "application/json",
        }
        connection.request("POST", "/api/publish", body, headers)
        response = connection.getresponse()
        return response.status, json.loads(response.read())
    finally:
        connection.close()


async def test_a_redis_outage_fails_publishes_loudly_then_clients_recover_or_are_told(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    server = start(server_factory, redis_server, 2)
    topic = unique("outage")
    clients = await followers(server, topic, 40)
    publisher = await AsyncClient.open(server)
    try:
        acknowledged = await publish_pipelined(publisher, topic, 30)
        old_epoch = clients[0].results[0]["epoch"]

        redis_server.stop()  # SIGKILL: Redis loses everything
        request_id = await publisher.send(op="publish", topic=topic, data={"n": -1})
        failure = await publisher.recv(15)
        assert failure["id"] == request_id and failure["code"] == "backend_unavailable", failure
        status, body = await asyncio.to_thread(http_publish, server, topic, "during the outage")
        assert status == 503 and body["error"]["code"] == "backend_unavailable", body

        redis_server.start()
        deadline = time.monotonic() + timeout(15)
        while True:  # publishing works again as soon as Redis answers
            status, body = await asyncio.to_thread(http_publish, server, topic, "after")
            if status == 200:
                break
            assert status == 503 and time.monotonic() < deadline, body
            await asyncio.sleep(0.1)
        new_epoch = body["epoch"]
        assert new_epoch != old_epoch and body["offset"] == 1
        more = await publish_pipelined(publisher, topic, 5, start=100)
        assert more == [2, 3, 4, 5, 6]

        def caught_up(client: Follower) -> bool:
            told = [r for r in client.results if r["epoch"] == new_epoch]
            return client.offsets(new_epoch)[-1:] == [6] or bool(told and told[-1]["offset"] >= 6)

        await asyncio.gather(*(c.follow(caught_up, 30) for c in clients))
        for client in clients:
            before = client.offsets(old_epoch)
            refused = [r for r in client.results[1:] if r.get("recovered") is False]
            # Every acknowledged message, or an explicit recovered: false; never a silent gap.
            assert before == acknowledged or refused, (before, client.results)
            # Redis restarted empty: the new epoch cannot recover the old one, and says so.
            assert refused and refused[0]["epoch"] == new_epoch
            after = client.offsets(new_epoch)
            assert after == sorted(set(after))
        # And every client is live again.
        assert await publish_pipelined(publisher, topic, 1, start=200) == [7]
        await asyncio.gather(
            *(c.follow(lambda c: c.offsets(new_epoch)[-1:] == [7], 10) for c in clients)
        )
    finally:
        await publisher.close()
        await close_all(clients)


async def test_killing_one_worker_loses_nothing_for_anyone(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    server = start(server_factory, redis_server, 2)
    topic = unique("kill")
    clients = await followers(server, topic, 60)
    publisher = RedisBackend(redis_server.url)  # a process of its own, like a Celery worker
    await publisher.start(lambda m: None)
    try:
        assert workers_subscribed(redis_server, topic) == 2
        victim = worker_pids(server)[0]
        sent: list[int] = []
        for i in range(150):
            if i == 50:
                os.kill(victim, signal.SIGKILL)
            sent.append((await publisher.publish(topic, str(i), json=True)).offset)
            await asyncio.sleep(0.005)
        assert sent == list(range(1, 151))

        await asyncio.gather(*(c.follow(lambda c: c.offsets()[-1:] == [150], 30) for c in clients))
        killed = [c for c in clients if c.reconnects]
        assert 0 < len(killed) < len(clients)
        for client in clients:
            assert client.offsets() == sent  # no gap, no duplicate, in order
            assert [data for _, _, data in client.received] == list(range(150))
        for client in killed:
            assert client.results[-1]["recovered"] is True and client.results[-1]["missed"] >= 0
    finally:
        await publisher.stop()
        await close_all(clients)


async def test_four_thousand_connections_at_once_are_all_accepted(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    server = start(server_factory, redis_server, 2)
    topic = unique("burst")
    url = f"{server.ws_url}/ws/broadcast/{topic}/"

    async def connect(i: int) -> websockets.ClientConnection:
        return await websockets.connect(url, open_timeout=timeout(60), max_queue=None)

    results = await asyncio.gather(*(connect(i) for i in range(4000)), return_exceptions=True)
    sockets = [r for r in results if isinstance(r, websockets.ClientConnection)]
    try:
        failures = [r for r in results if not isinstance(r, websockets.ClientConnection)]
        assert failures == [], f"{len(failures)} refused, e.g. {failures[:3]}"
        assert workers_subscribed(redis_server, topic) == 2
        await sockets[0].send("to all 4000")
        received = await asyncio.gather(*(asyncio.wait_for(s.recv(), timeout(30)) for s in sockets))
        assert set(received) == {"to all 4000"}
    finally:
        await asyncio.gather(*(s.close() for s in sockets))


async def test_a_burst_from_one_raw_client_reaches_every_worker_in_order_once(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    """The raw endpoint does not wait for each publish before the next (a burst goes to Redis
    in few round trips): the order of the client's frames must survive that, on every worker."""
    server = start(server_factory, redis_server, 2)
    topic = unique("rawburst")
    url = f"{server.ws_url}/ws/broadcast/{topic}/"
    sockets = [await websockets.connect(url, max_queue=None) for _ in range(20)]
    try:
        assert workers_subscribed(redis_server, topic) == 2
        publishes_before = redis_server.command_calls("publish")
        frames = [f"m{i}" for i in range(500)]
        for text in frames:
            await sockets[0].send(text)  # back to back: no waiting for anything in between

        async def read_all(socket: websockets.ClientConnection) -> list[str]:
            return [str(await asyncio.wait_for(socket.recv(), timeout(30))) for _ in frames]

        assert await asyncio.gather(*(read_all(s) for s in sockets)) == [frames] * 20
        assert redis_server.command_calls("publish") - publishes_before == 500
    finally:
        await asyncio.gather(*(s.close() for s in sockets))


async def test_a_raw_client_whose_publish_redis_refuses_is_closed_1013(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    """The raw endpoint does not wait for each publish's answer, but a refused publish still
    closes its client with 1013 (try again later), never silently."""
    server = start(server_factory, redis_server, 1)
    url = f"{server.ws_url}/ws/broadcast/{unique('refused')}/"
    async with websockets.connect(url) as client:
        await client.send("before")
        assert await asyncio.wait_for(client.recv(), timeout(10)) == "before"
        redis_server.stop()
        await client.send("during the outage")
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), timeout(20))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert "publish on" in server.log() and "failed, closing" in server.log()
