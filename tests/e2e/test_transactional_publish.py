"""Tier 3: ``publish()`` inside ``transaction.atomic()`` is delivered if and only if the
transaction commits, exactly once, even when the publishing process is killed (SIGKILL) between
the commit and its relay: two ``manage.py serve`` workers over a private Redis relay what it left
in the outbox. The publishing processes are ``manage.py shell`` runs sharing the servers'
database and Redis, as a Celery task or a view's process would."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from tests.conftest import ROOT, ServerProcess, example_env, timeout
from tests.protocol_clients import AsyncClient
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

ROLLBACK = """
from django.db import transaction
import megaphone
try:
    with transaction.atomic():
        megaphone.publish(TOPIC, "rolled back")
        raise RuntimeError("roll back")
except RuntimeError:
    pass
"""
COMMIT = """
from django.db import transaction
import megaphone
with transaction.atomic():
    megaphone.publish(TOPIC, "committed")
"""
# on_commit callbacks run in the order they were registered: the process dies right after the
# commit, before the relay that publish() registered.
CRASH = """
import os, signal
from django.db import transaction
import megaphone
with transaction.atomic():
    transaction.on_commit(lambda: os.kill(os.getpid(), signal.SIGKILL))
    megaphone.publish(TOPIC, "orphan")
"""
COUNT = "from megaphone.models import PendingMessage; print(PendingMessage.objects.count())"


def shell(server: ServerProcess, code: str, topic: str) -> subprocess.CompletedProcess[str]:
    manage = [sys.executable, str(ROOT / "example" / "manage.py")]
    return subprocess.run(
        [*manage, "shell", "-c", f"TOPIC = {topic!r}\n{code}"],
        env=example_env(server.log_path.parent, server.env),
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )


async def subscriber(server: ServerProcess) -> tuple[str, AsyncClient]:
    """A protocol client subscribed to a new topic, and that topic."""
    topic = f"tx-{uuid.uuid4().hex[:8]}"
    client = AsyncClient(await websockets.connect(f"{server.ws_url}/ws/connect/"))
    client.hello = await client.recv()
    await client.result(op="subscribe", topic=topic)
    return topic, client


async def messages(client: AsyncClient, count: int) -> list[dict[str, Any]]:
    received = []
    while len(received) < count:
        frame = await client.recv(10)
        if frame["type"] == "message":
            received.append(frame)
    return received


async def test_delivered_iff_committed_exactly_once_even_if_the_publisher_dies(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.e2e.redis_settings",
        "PYTHONPATH": str(ROOT),
        "REDIS_URL": redis_server.url,
    }
    server = server_factory(workers=2, env=env)
    topic, client = await subscriber(server)
    try:
        rolled_back = await asyncio.to_thread(shell, server, ROLLBACK, topic)
        assert rolled_back.returncode == 0, rolled_back.stderr
        started = time.monotonic()
        committed = await asyncio.to_thread(shell, server, COMMIT, topic)
        assert committed.returncode == 0, committed.stderr
        [first] = await messages(client, 1)
        assert first["data"] == "committed" and first["offset"] == 1, first
        crashed = await asyncio.to_thread(shell, server, CRASH, topic)
        assert crashed.returncode == -9, (crashed.returncode, crashed.stderr)
        killed_at = time.monotonic()
        [second] = await messages(client, 1)
        relayed_after = time.monotonic() - killed_at
        assert second["data"] == "orphan" and second["offset"] == 2, second
        # the outbox is empty once relayed; then nothing else arrives before a live marker
        deadline = time.monotonic() + timeout(10)
        while (await asyncio.to_thread(shell, server, COUNT, topic)).stdout.split()[-1] != "0":
            assert time.monotonic() < deadline, "the outbox kept the relayed row"
            await asyncio.sleep(0.2)
        await client.send(op="publish", topic=topic, data="end")
        frames = [await client.recv(), await client.recv()]  # its reply and it, in any order
        [end] = [frame for frame in frames if frame["type"] == "message"]
        assert end["data"] == "end" and end["offset"] == 3, frames
        history = await client.result(op="history", topic=topic)
        assert history["offset"] == 3
        texts = [m["data"] for m in history["messages"]]
        assert texts == ["committed", "orphan", "end"], texts  # the rolled-back one never was
        print(
            f"\ncommitted: {time.monotonic() - started:.2f} s incl. shell start-up; "
            f"orphan relayed {relayed_after:.2f} s after the kill"
        )
    finally:
        await client.close()


async def test_on_the_memory_backend_the_server_relays_a_shells_committed_message(
    server: ServerProcess,
) -> None:
    """A process serving no client cannot reach the in-memory backend's subscribers; inside a
    transaction its message is committed to the outbox and the server's worker relays it."""
    topic, client = await subscriber(server)
    try:
        committed = await asyncio.to_thread(shell, server, COMMIT, topic)
        assert committed.returncode == 0, committed.stderr
        [message] = await messages(client, 1)
        assert message["data"] == "committed" and message["offset"] == 1, message
    finally:
        await client.close()
