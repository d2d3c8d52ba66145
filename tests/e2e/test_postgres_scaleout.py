"""Tier 3: ``manage.py serve --workers 2`` over a private PostgreSQL server (postgres://).

Protocol and raw clients spread over the workers receive every message once, in offset order,
with one NOTIFY per message (counted by a LISTEN session of the test's own); publishes from
another process (a Celery-like worker calling ``megaphone.publish``) arrive; clients recover
after every process and the database restarted; the database restarted mid-stream, or every
connection terminated with ``pg_terminate_backend``, ends with every subscriber holding every
acknowledged message or an explicit ``recovered: false``: never a silent gap.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
import websockets

from megaphone.backends import BackendUnavailable
from megaphone.backends.postgres import PostgresBackend
from megaphone.testing import Signal
from tests.conftest import ROOT, ServerProcess, free_port, launch, start_server, timeout
from tests.postgres_server import PostgresServer
from tests.protocol_clients import AsyncClient

from .test_redis_scaleout import (
    REDIS_SETTINGS_ENV,
    Follower,
    close_all,
    followers,
    publish_pipelined,
    unique,
)

#: The Redis scale-out tests' settings (no dashboard figures, no publish-rate limit, an API key)
#: are the backend's business of none: the same, on PostgreSQL.
SETTINGS_ENV = REDIS_SETTINGS_ENV
CHANNEL = "megaphone_megaphone"  # the backend's one channel, for its default schema


def env_of(postgres_server: PostgresServer) -> dict[str, str]:
    return {**SETTINGS_ENV, "MEGAPHONE_BACKEND": postgres_server.url}


def start(
    server_factory: Callable[..., ServerProcess], postgres_server: PostgresServer
) -> ServerProcess:
    return server_factory(workers=2, env=env_of(postgres_server))


class NotifyCounter:
    """A LISTEN session of the test's own, counting the NOTIFYs of the backend's channel."""

    def __init__(self, postgres_server: PostgresServer) -> None:
        self.url = postgres_server.url
        self.count = 0
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._counted = Signal()

    async def __aenter__(self) -> NotifyCounter:
        self._task = asyncio.create_task(self._run())
        await asyncio.wait_for(self._ready.wait(), timeout(10))
        return self

    async def _run(self) -> None:
        async with await psycopg.AsyncConnection.connect(self.url, autocommit=True) as conn:
            await conn.execute(f"LISTEN {CHANNEL}")
            self._ready.set()
            async for _ in conn.notifies():
                self.count += 1
                self._counted.notify()

    async def until(self, n: int) -> None:
        await self._counted.wait_until(lambda: self.count >= n, timeout=20)

    async def __aexit__(self, *exc: object) -> None:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


async def test_every_client_of_both_workers_gets_every_message_once_with_one_notify_each(
    server_factory: Callable[..., ServerProcess], postgres_server: PostgresServer
) -> None:
    server = start(server_factory, postgres_server)
    topic = unique("pgscale")
    clients = await followers(server, topic, 100)
    raw = [
        await websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/", max_queue=None)
        for _ in range(10)
    ]
    publisher = await AsyncClient.open(server)
    try:
        # Each worker LISTENs once, whatever its number of clients and topics.
        assert listening_workers(postgres_server) == 2
        calls_before = publish_calls(postgres_server)
        async with NotifyCounter(postgres_server) as notifies:
            offsets = await publish_pipelined(publisher, topic, 300)
            assert offsets == list(range(1, 301))
            for text in ("raw one", "raw two"):
                await raw[0].send(text)
            await asyncio.gather(*(c.follow(lambda c: len(c.received) >= 302, 60) for c in clients))
            await notifies.until(302)
            assert notifies.count == 302  # one NOTIFY per message, nothing else
        if calls_before is not None:
            assert publish_calls(postgres_server) == calls_before + 302  # one statement each
        epoch = clients[0].received[0][0]
        expected: list[tuple[str, int, Any]] = [(epoch, i + 1, {"n": i}) for i in range(300)]
        expected += [(epoch, 301, "raw one"), (epoch, 302, "raw two")]
        for client in clients:
            assert client.received == expected
        for socket in raw:  # the raw endpoint: the same frames, protocol publishes included
            got = [await asyncio.wait_for(socket.recv(), timeout(10)) for _ in range(302)]
            assert got[-2:] == ["raw one", "raw two"]
    finally:
        await publisher.close()
        await close_all(clients)
        await asyncio.gather(*(s.close() for s in raw))


def publish_calls(postgres_server: PostgresServer) -> int | None:
    """Calls of the publish function sent by clients (pg_stat_statements, top level); None
    where the server does not load pg_stat_statements (a shared server)."""
    try:
        rows = postgres_server.psql(
            "megaphone",
            "SELECT coalesce(sum(calls), 0) FROM pg_stat_statements WHERE toplevel "
            'AND query LIKE \'SELECT * FROM "megaphone"."publish"(%\'',
        )
    except psycopg.Error:
        return None
    return int(rows.strip())


def listening_workers(postgres_server: PostgresServer) -> int:
    """The backend's listening connections (one per process that started a backend)."""
    rows = postgres_server.psql(
        "megaphone",
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE application_name = 'megaphone listener' AND datname = current_database()",
    )
    return int(rows.strip())


CELERY_LIKE = """
import sys, django
django.setup()
import megaphone
for i in range(int(sys.argv[2])):
    megaphone.publish(sys.argv[1], f"from a worker {i}")
"""


async def test_publishes_from_a_separate_process_reach_every_worker(
    server_factory: Callable[..., ServerProcess], postgres_server: PostgresServer
) -> None:
    server = start(server_factory, postgres_server)
    topic = unique("broadcast.pgcelery")
    clients = await followers(server, topic, 20)
    try:
        done = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", CELERY_LIKE, topic, "25"],
            env={**_base_env(), **env_of(postgres_server)},
            cwd=ROOT / "example",
            capture_output=True,
            text=True,
            timeout=timeout(60),
        )
        assert done.returncode == 0, done.stderr
        await asyncio.gather(*(c.follow(lambda c: len(c.received) >= 25, 30) for c in clients))
        for client in clients:
            assert [data for _, _, data in client.received] == [
                f"from a worker {i}" for i in range(25)
            ]
    finally:
        await close_all(clients)


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MEGAPHONE_BACKEND")}


async def publish_through(
    backend: PostgresBackend, topic: str, n: int, fault: Callable[[], None], at: int
) -> list[int]:
    """Publish ``n`` messages, one every few ms, calling ``fault()`` before the ``at``-th;
    return the offsets of those acknowledged (a publish that raised was not: it is retried
    until the database answers again, under a new number)."""
    acknowledged: list[int] = []
    for i in range(n):
        if i == at:
            await asyncio.to_thread(fault)
        while True:
            try:
                acknowledged.append((await backend.publish(topic, str(i), json=True)).offset)
                break
            except BackendUnavailable:
                await asyncio.sleep(0.05)
        await asyncio.sleep(0.003)
    return acknowledged


def no_silent_gap(clients: list[Follower], acknowledged: list[int]) -> None:
    """Every subscriber ends with every acknowledged message, or was told it could not."""
    for client in clients:
        refused = [r for r in client.results[1:] if r.get("recovered") is False]
        got = client.offsets()
        assert got == sorted(set(got)), got  # in order, no duplicate
        assert set(acknowledged) <= set(got) or refused, (acknowledged, got, client.results)


async def fault_mid_stream(
    server_factory: Callable[..., ServerProcess],
    postgres_server: PostgresServer,
    fault: Callable[[], None],
) -> list[Follower]:
    server = start(server_factory, postgres_server)
    topic = unique("pgfault")
    clients = await followers(server, topic, 40)
    publisher = PostgresBackend(postgres_server.url)  # a process of its own
    await publisher.start(lambda m: None)
    try:
        acknowledged = await publish_through(publisher, topic, 120, fault, 40)
        assert acknowledged == sorted(set(acknowledged))
        last = acknowledged[-1]
        await asyncio.gather(*(c.follow(lambda c: c.offsets()[-1:] == [last], 60) for c in clients))
        no_silent_gap(clients, acknowledged)
        return clients
    finally:
        await publisher.stop()
        await close_all(clients)


async def test_the_database_restarted_mid_stream_loses_nothing_silently(
    server_factory: Callable[..., ServerProcess], postgres_server: PostgresServer
) -> None:
    clients = await fault_mid_stream(server_factory, postgres_server, postgres_server.restart)
    # PostgreSQL keeps its tables across a restart: everyone recovered every message.
    for client in clients:
        assert client.offsets() == list(range(1, client.offsets()[-1] + 1))


async def test_terminated_connections_lose_nothing_silently(
    server_factory: Callable[..., ServerProcess], postgres_server: PostgresServer
) -> None:
    def terminate() -> None:
        # The listeners of both workers at least, and every command connection.
        assert postgres_server.terminate("megaphone%") >= 2

    clients = await fault_mid_stream(server_factory, postgres_server, terminate)
    for client in clients:
        assert client.offsets() == list(range(1, client.offsets()[-1] + 1))


async def test_clients_recover_after_every_process_and_the_database_restarted(
    server_factory: Callable[..., ServerProcess],
    postgres_server: PostgresServer,
    tmp_path: Any,
) -> None:
    server = start(server_factory, postgres_server)
    topic = unique("pgrestart")
    clients = await followers(server, topic, 10)
    publisher = await AsyncClient.open(server)
    try:
        assert await publish_pipelined(publisher, topic, 20) == list(range(1, 21))
        await asyncio.gather(*(c.follow(lambda c: len(c.received) >= 20, 30) for c in clients))
        await publisher.close()
        server.stop()
        postgres_server.restart()
        # Published while no server ran: by another process, straight into the database.
        backend = PostgresBackend(postgres_server.url)
        await backend.start(lambda m: None)
        try:
            missed = [(await backend.publish(topic, str(i), json=True)).offset for i in range(5)]
        finally:
            await backend.stop()
        assert missed == [21, 22, 23, 24, 25]
        again = start_server(tmp_path, workers=2, env=env_of(postgres_server), port=server.port)
        try:
            await asyncio.gather(*(c.follow(lambda c: len(c.received) >= 25, 60) for c in clients))
            for client in clients:
                assert client.offsets() == list(range(1, 26))
                assert client.results[-1]["recovered"] is True, client.results
        finally:
            await close_all(clients)
            again.stop()
    finally:
        await close_all(clients)


async def test_messages_notified_while_the_listeners_reconnect_are_caught_up(
    server_factory: Callable[..., ServerProcess], postgres_server: PostgresServer
) -> None:
    """The last messages, NOTIFYed while no worker listened, with nothing published after them
    (so no later offset reveals the gap to the sessions): the listeners' catch-up delivers
    them."""
    server = start(server_factory, postgres_server)
    topic = unique("pgcatchup")
    clients = await followers(server, topic, 20)
    publisher = PostgresBackend(postgres_server.url)
    await publisher.start(lambda m: None)
    try:
        for i in range(3):
            await publisher.publish(topic, str(i))
        await asyncio.gather(*(c.follow(lambda c: len(c.received) >= 3, 30) for c in clients))
        # Both workers' (and the publisher's, if it listens yet).
        assert postgres_server.terminate("megaphone listener") >= 2
        # Faster than a listener reconnects (its backoff starts at 25 ms).
        sent = [(await publisher.publish(topic, str(i))).offset for i in range(3, 8)]
        assert sent == [4, 5, 6, 7, 8]
        await asyncio.gather(*(c.follow(lambda c: len(c.received) >= 8, 30) for c in clients))
        for client in clients:
            assert client.offsets() == list(range(1, 9))
    finally:
        await publisher.stop()
        await close_all(clients)


async def test_a_lost_database_starts_new_epochs_and_every_client_is_told(
    server_factory: Callable[..., ServerProcess], postgres_server: PostgresServer
) -> None:
    """The database replaced by an empty one (its disk lost): the workers re-create the schema,
    the topic starts a new epoch, and every protocol client gets ``recovered: false``."""
    server = start(server_factory, postgres_server)
    topic = unique("pglost")
    clients = await followers(server, topic, 20)
    publisher = await AsyncClient.open(server)
    try:
        assert await publish_pipelined(publisher, topic, 10) == list(range(1, 11))
        await asyncio.gather(*(c.follow(lambda c: len(c.received) >= 10, 30) for c in clients))
        old_epoch = clients[0].received[0][0]
        postgres_server.wipe()
        async with asyncio.timeout(timeout(30)):
            while True:  # publishing fails loudly until the workers reconnect
                await publisher.send(op="publish", topic=topic, data="after")
                reply = await publisher.recv(15)
                if reply["type"] == "reply":
                    answer = reply["result"]
                    break
                assert reply["code"] == "backend_unavailable", reply
                await asyncio.sleep(0.1)
        assert answer["offset"] == 1 and answer["epoch"] != old_epoch, answer

        def told(client: Follower) -> bool:
            return any(r.get("recovered") is False for r in client.results[1:])

        await asyncio.gather(*(c.follow(told, 30) for c in clients))
        for client in clients:
            assert client.offsets(old_epoch) == list(range(1, 11))
            refused = [r for r in client.results[1:] if r.get("recovered") is False]
            assert refused[0]["epoch"] == answer["epoch"], client.results
    finally:
        await publisher.close()
        await close_all(clients)


async def test_make_run_backend_selects_postgres(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """``make run BACKEND=<url> WORKERS=2``: the contract's way to pick a backend."""
    port = free_port()
    command = ["make", "-s", "-C", str(ROOT), "run", f"BACKEND={postgres_server.url}"]
    server = launch([*command, f"PORT={port}", "WORKERS=2"], tmp_path, port, SETTINGS_ENV)
    try:
        async with asyncio.timeout(timeout(30)):
            while server.log().count("Started server process") < 2:
                await asyncio.sleep(0.05)
        topic = unique("pgmake")
        url = f"{server.ws_url}/ws/broadcast/{topic}/"
        sockets = [await websockets.connect(url) for _ in range(8)]  # over both workers
        try:
            await sockets[0].send("through PostgreSQL")
            for socket in sockets:
                assert await asyncio.wait_for(socket.recv(), timeout(10)) == "through PostgreSQL"
        finally:
            await asyncio.gather(*(s.close() for s in sockets))
        stored = postgres_server.psql(
            "megaphone", f"SELECT \"offset\" FROM megaphone.topics WHERE topic = '{topic}'"
        )
        assert stored.strip() == "1"
        assert listening_workers(postgres_server) == 2
    finally:
        server.stop()
