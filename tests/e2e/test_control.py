"""Tier 3: control of a user's connections from the server, on a real ``manage.py serve`` with
2 workers over a private Redis: live revocation (a user removed from a group loses the group's
topic on every connection, in both workers, within a second, with ``unsubscribed`` code
``revoked`` and no message after it), server subscriptions (``subscribed`` at connect, recovered
from the URL's ``since``), and the orders of the HTTP API and ``manage.py megaphone``
(unsubscribe with a reason, disconnect with 4410)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from typing import Any
from urllib.parse import quote

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from megaphone.backends.redis import RedisBackend
from megaphone.client import Client, ClientError
from tests.conftest import ROOT, ServerProcess, example_env, timeout
from tests.e2e.test_redis_scaleout import workers_subscribed
from tests.protocol_clients import AsyncClient
from tests.redis_server import RedisServer

pytestmark = pytest.mark.e2e

KEY = "control-key-0123456789abcdef"
ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.e2e.django_settings",
    "PYTHONPATH": str(ROOT),
    "MEGAPHONE_API_KEYS": KEY,
    "MEGAPHONE_TEST_SERVER_SUBSCRIPTIONS": "1",
}
#: alice, in the group "editors" (the topic "editors" is for its members).
SETUP = """
import json
from django.contrib.auth.models import Group, User
from megaphone.server.tokens import issue_token
alice = User.objects.create_user("alice")
alice.groups.add(Group.objects.create(name="editors"))
print(json.dumps({"pk": alice.pk, "token": issue_token(alice)}))
"""
#: Remove alice from "editors", and say when (seconds since the epoch).
REMOVE = """
import time
from django.contrib.auth.models import Group, User
User.objects.get(username="alice").groups.remove(Group.objects.get(name="editors"))
print(time.time())
"""


@pytest.fixture
def world(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> tuple[ServerProcess, dict[str, Any], dict[str, str]]:
    env = {**ENV, "REDIS_URL": redis_server.url}
    server = server_factory(workers=2, env=env)
    full_env = example_env(server.log_path.parent, env)
    out = manage(full_env, "shell", "-c", SETUP)
    return server, json.loads(out.strip().splitlines()[-1]), full_env


def manage(env: dict[str, str], *args: str) -> str:
    command = [sys.executable, str(ROOT / "example" / "manage.py"), *args]
    return subprocess.run(command, env=env, check=True, capture_output=True, text=True).stdout


async def connect(server: ServerProcess, token: str, query: str = "") -> AsyncClient:
    url = f"{server.ws_url}/ws/connect/?token={token}{query}"
    client = AsyncClient(await websockets.connect(url, max_queue=None))
    client.hello = await client.recv()
    assert client.hello["type"] == "connected", client.hello
    return client


async def frame_of(client: AsyncClient, kind: str, topic: str) -> dict[str, Any]:
    while True:
        frame = await client.recv(timeout(10))
        if frame["type"] == kind and frame.get("topic") == topic:
            return frame


async def test_removed_from_a_group_loses_its_topic_in_every_worker_within_a_second(
    world: tuple[ServerProcess, dict[str, Any], dict[str, str]], redis_server: RedisServer
) -> None:
    server, alice, env = world
    clients = [await connect(server, alice["token"]) for _ in range(8)]
    publisher = RedisBackend(redis_server.url)
    await publisher.start(lambda message: None)
    try:
        for client in clients:
            await frame_of(client, "subscribed", f"user:{alice['pk']}")
            await client.result(op="subscribe", topic="editors")
            await client.result(op="subscribe", topic="news")
        # Both workers hold some of alice's connections: the change comes from a third process.
        assert workers_subscribed(redis_server, f"$user:{alice['pk']}") == 2
        flowing = True

        async def publish_all_along() -> None:
            n = 0
            while flowing:
                n += 1
                await publisher.publish("editors", f"secret {n}")
                await asyncio.sleep(0.01)

        stream = asyncio.ensure_future(publish_all_along())
        removed = await asyncio.to_thread(manage, env, "shell", "-c", REMOVE)
        removed_at = float(removed.strip().splitlines()[-1])
        latencies = []
        for client in clients:
            unsubscribed = await frame_of(client, "unsubscribed", "editors")
            latencies.append(time.time() - removed_at)
            assert unsubscribed["code"] == "revoked", unsubscribed
        flowing = False
        await stream
        await publisher.publish("news", "after")  # a marker, behind any late message
        for client in clients:
            while (frame := await client.recv(timeout(10)))["type"] != "message" or frame[
                "topic"
            ] != "news":
                assert frame.get("topic") != "editors", frame  # nothing after unsubscribed
        assert max(latencies) < 1.0, latencies
        reply = await clients[0].answer(await clients[0].send(op="subscribe", topic="editors"))
        assert reply["type"] == "error" and reply["code"] == "forbidden", reply
        print(
            f"\nrevoked on 8 connections over 2 workers in {max(latencies) * 1000:.0f} ms at most"
        )
    finally:
        await publisher.stop()
        for client in clients:
            await client.close()


async def test_server_subscriptions_are_announced_and_recovered_from_the_urls_since(
    world: tuple[ServerProcess, dict[str, Any], dict[str, str]], redis_server: RedisServer
) -> None:
    server, alice, _ = world
    topic = f"user:{alice['pk']}"
    client = await connect(server, alice["token"])
    subscribed = await client.recv()
    assert subscribed["type"] == "subscribed" and subscribed["topic"] == topic, subscribed
    publisher = RedisBackend(redis_server.url)
    await publisher.start(lambda message: None)
    try:
        first = await publisher.publish(topic, "one")
        assert (await frame_of(client, "message", topic))["data"] == "one"
        # Asking for it too answers where the client stands, not an error.
        reply = await client.result(op="subscribe", topic=topic)
        assert reply["server"] is True and reply["offset"] == first.offset, reply
        await client.close()
        for data in ("two", "three"):
            await publisher.publish(topic, data)
        since = json.dumps({topic: {"offset": first.offset, "epoch": first.epoch}})
        again = await connect(server, alice["token"], f"&since={quote(since)}")
        subscribed = await again.recv()
        assert subscribed["type"] == "subscribed", subscribed
        assert subscribed["recovered"] is True and subscribed["missed"] == 2, subscribed
        assert [(await again.recv())["data"] for _ in range(2)] == ["two", "three"]
        await again.close()
        bad = await connect(server, alice["token"], "&since=not-json")
        error = await bad.recv()
        assert error["type"] == "error" and error["code"] == "bad_request", error
        assert (await bad.recv())["type"] == "subscribed"  # subscribed all the same, from now
        await bad.close()
    finally:
        await publisher.stop()


def api(server: ServerProcess, path: str, body: dict[str, Any] | None = None) -> Any:
    request = urllib.request.Request(
        f"{server.http_url}/api/{path}",
        data=json.dumps(body).encode() if body is not None else b"",
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=timeout(10)) as response:
        return json.loads(response.read())


async def test_the_http_api_and_the_command_unsubscribe_and_disconnect_a_user(
    world: tuple[ServerProcess, dict[str, Any], dict[str, str]],
) -> None:
    server, alice, env = world
    clients = [await connect(server, alice["token"]) for _ in range(4)]
    python_client = Client(f"{server.ws_url}/ws/connect/?token={alice['token']}")
    try:
        for client in clients:
            await client.result(op="subscribe", topic="news")
        await python_client.connect()
        news = await python_client.subscribe("news")
        answer = await asyncio.to_thread(
            api, server, f"users/{alice['pk']}/unsubscribe", {"topic": "news", "reason": "muted"}
        )
        assert answer == {"user": str(alice["pk"]), "order": "unsubscribe"}
        for client in clients:
            assert (await frame_of(client, "unsubscribed", "news"))["code"] == "muted"
        with pytest.raises(ClientError) as ended:  # the Python client's subscription is over
            await asyncio.wait_for(anext(news), timeout(10))
        assert ended.value.code == "muted"
        await asyncio.to_thread(manage, env, "megaphone", "disconnect", str(alice["pk"]))
        for client in clients:
            with pytest.raises(ConnectionClosed) as closed:
                while True:
                    await client.ws.recv(timeout(10))
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 4410
    finally:
        await python_client.close()
        for client in clients:
            await client.close()


async def test_an_http_session_gets_its_server_subscriptions_and_obeys_its_users_orders(
    world: tuple[ServerProcess, dict[str, Any], dict[str, str]],
) -> None:
    """The JSON protocol over HTTP (``/sse/connect/``) is a connection like any other: its
    server subscriptions come at connect; a re-check (sent by every save of the user) leaves it
    open, a revocation ends only the lost topic, a disconnect ends the stream with its code."""
    from tests.e2e.test_http_session import apost, frame
    from tests.sse_client import connect as sse_connect

    server, alice, env = world
    stream = await sse_connect(f"{server.http_url}/sse/connect/?token={alice['token']}", {})
    try:
        first = await asyncio.wait_for(stream.next(), timeout(5))
        assert first is not None and first.type == "session"
        session = f"{first.data}?token={alice['token']}"
        assert (await frame(stream))["type"] == "connected"
        assert (await frame(stream)) | {"offset": 0, "epoch": ""} == {
            "type": "subscribed",
            "topic": f"user:{alice['pk']}",
            "offset": 0,
            "epoch": "",
        }
        subscribe = {"op": "subscribe", "id": 1, "topic": "editors"}
        assert await apost(server, session, subscribe) == 202
        assert (await frame(stream))["type"] == "reply"
        manage(env, "megaphone", "recheck", str(alice["pk"]))
        manage(env, "shell", "-c", REMOVE)
        unsubscribed = await frame(stream)
        assert (unsubscribed["type"], unsubscribed["topic"], unsubscribed["code"]) == (
            "unsubscribed",
            "editors",
            "revoked",
        ), unsubscribed
        assert await apost(server, session, {"op": "ping", "id": 2}) == 202
        assert (await frame(stream)) == {"type": "pong", "id": 2}  # still open
        manage(env, "megaphone", "disconnect", str(alice["pk"]))
        end = await asyncio.wait_for(stream.next(), timeout(10))
        assert end is not None and end.type == "close" and json.loads(end.data) == {"code": 4410}
    finally:
        await stream.close()


async def test_a_change_made_where_no_server_runs_reaches_the_server_through_the_outbox(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """The in-memory backend, and the user deactivated from ``manage.py shell`` (a process that
    serves no clients, outside any transaction): the re-check goes through the transactional
    outbox, and the server's relay sends it: the user's connection is closed with 4401."""
    server = server_factory(workers=1, env=ENV)
    env = example_env(server.log_path.parent, ENV)
    alice = json.loads(manage(env, "shell", "-c", SETUP).strip().splitlines()[-1])
    client = await connect(server, alice["token"])
    try:
        deactivate = "from django.contrib.auth.models import User\n" + (
            'u = User.objects.get(username="alice"); u.is_active = False; u.save()'
        )
        manage(env, "shell", "-c", deactivate)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await client.recv(timeout(10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
    finally:
        await client.close()
