"""Tier 2: the raw broadcast endpoint in-process, through Channels' WebsocketCommunicator."""

from __future__ import annotations

import asyncio

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from example.asgi import application
from megaphone.engine.node import get_node
from megaphone.testing import Signal, unique
from tests.conftest import loop_turns
from tests.settings import OPEN_PERMISSIONS


def path(topic: str | None = None) -> str:
    return "/ws/broadcast/" if topic is None else f"/ws/broadcast/{topic}/"


async def connect(url: str, headers: list[tuple[bytes, bytes]] | None = None):
    communicator = WebsocketCommunicator(application, url, headers=headers or [])
    connected, code = await communicator.connect(timeout=5)
    assert connected, code
    return communicator


async def test_text_reaches_every_client_of_the_topic_sender_included() -> None:
    topic = unique("room")
    clients = [await connect(path(topic)) for _ in range(3)]
    outsider = await connect(path(f"{topic}-other"))
    await clients[0].send_to(text_data="hello")
    for client in clients:
        assert await client.receive_from(timeout=2) == "hello"
    assert await outsider.receive_nothing(timeout=0.2)
    for client in [*clients, outsider]:
        await client.disconnect()


async def test_default_topic_is_broadcast() -> None:
    a = await connect(path())
    b = await connect(path("broadcast"))
    await a.send_to(text_data="on broadcast")
    assert await b.receive_from(timeout=2) == "on broadcast"
    assert await a.receive_from(timeout=2) == "on broadcast"
    await a.disconnect()
    await b.disconnect()


async def test_binary_and_empty_messages_arrive_unchanged() -> None:
    topic = unique("bin")
    a, b = await connect(path(topic)), await connect(path(topic))
    await a.send_to(bytes_data=b"\x00\xffbinary")
    # send_to() refuses empty frames, so send the ASGI events directly.
    await a.send_input({"type": "websocket.receive", "text": ""})
    await a.send_input({"type": "websocket.receive", "bytes": b""})
    for client in (a, b):
        assert await client.receive_output(timeout=2) == {
            "type": "websocket.send",
            "bytes": b"\x00\xffbinary",
        }
        assert await client.receive_output(timeout=2) == {"type": "websocket.send", "text": ""}
        assert await client.receive_output(timeout=2) == {"type": "websocket.send", "bytes": b""}
    await a.disconnect()
    await b.disconnect()


@override_settings(MEGAPHONE={"MAX_MESSAGE_SIZE": 100})
async def test_oversize_message_closes_the_sender_with_1009_only() -> None:
    topic = unique("big")
    sender, other = await connect(path(topic)), await connect(path(topic))
    await sender.send_to(text_data="é" * 51)  # 102 bytes in UTF-8, 51 characters
    assert await sender.receive_output(timeout=2) == {"type": "websocket.close", "code": 1009}
    assert await other.receive_nothing(timeout=0.2)
    await sender.disconnect()
    await other.disconnect()


@pytest.mark.parametrize("topic", ["bad$topic", "-x", "a" * 201])
async def test_invalid_topic_is_refused_at_handshake(topic: str, caplog) -> None:
    communicator = WebsocketCommunicator(application, path(topic))
    connected, _ = await communicator.connect(timeout=5)
    assert not connected
    assert "refused WebSocket handshake" in caplog.text


async def test_foreign_origin_is_refused_no_origin_and_own_origin_accepted() -> None:
    communicator = WebsocketCommunicator(application, path(), [(b"origin", b"https://evil.com")])
    connected, _ = await communicator.connect(timeout=5)
    assert not connected
    own_origin = [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8000")]
    own = await connect(path(), own_origin)
    other_port = [(b"host", b"127.0.0.1:8000"), (b"origin", b"http://127.0.0.1:8001")]
    communicator = WebsocketCommunicator(application, path(), other_port)
    connected, _ = await communicator.connect(timeout=5)
    assert not connected
    none = await connect(path())
    await own.disconnect()
    await none.disconnect()


@override_settings(MEGAPHONE={"OUTBOX_MAX_MESSAGES": 5})
async def test_a_client_that_falls_behind_is_closed_with_4408_and_others_are_served() -> None:
    topic = unique("slow")
    slow = await connect(path(topic))
    node = await get_node()
    (slow_connection,) = node.hub.members(topic)
    # The communicator always reads, so make the slow connection's socket stop taking frames.
    slow_connection._send = lambda frame: asyncio.Event().wait()
    healthy = await connect(path(topic))
    for i in range(10):
        await node.publish(topic, str(i))
        assert await healthy.receive_from(timeout=2) == str(i)
    assert await slow.receive_output(timeout=2) == {"type": "websocket.close", "code": 4408}
    assert slow_connection.outbox.overflowed and len(slow_connection.outbox) == 0
    await slow.disconnect()
    await healthy.disconnect()
    assert topic not in node.hub.topics()


@override_settings(
    MEGAPHONE={"PUBLISH_RATE": 20, "PUBLISH_BURST": 20, "PERMISSIONS": OPEN_PERMISSIONS}
)
async def test_a_client_publishing_too_fast_is_closed_with_4429_and_others_are_unaffected() -> None:
    topic = unique("flood")
    flooder, calm = await connect(path(topic)), await connect(path(topic))
    for i in range(100):
        await flooder.send_to(text_data=f"f{i}")
    received = []
    while (event := await flooder.receive_output(timeout=2))["type"] == "websocket.send":
        received.append(event["text"])
    assert event == {"type": "websocket.close", "code": 4429}
    assert received == [f"f{i}" for i in range(20)]  # the burst went through, in order
    for i in range(20):
        assert await calm.receive_from(timeout=2) == f"f{i}"
    await calm.send_to(text_data="calm")
    assert await calm.receive_from(timeout=2) == "calm"
    await flooder.disconnect()
    await calm.disconnect()


@override_settings(MEGAPHONE={"MAX_CONNECTIONS_PER_IP": 3})
async def test_connections_per_ip_are_capped_and_freed_on_close(caplog) -> None:
    clients = [await connect(path()) for _ in range(3)]  # communicators share one address
    refused = WebsocketCommunicator(application, path())
    assert not (await refused.connect(timeout=5))[0]
    assert "already has 3 connections" in caplog.text
    await clients[0].disconnect()
    again = await connect(path())
    for client in [*clients[1:], again]:
        await client.disconnect()


@override_settings(MEGAPHONE={"PUBLISH_RATE": 0, "PERMISSIONS": OPEN_PERMISSIONS})
async def test_a_client_cannot_queue_more_than_max_publishing_behind_a_slow_pipelining_backend(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With a backend that pipelines publishes, the raw endpoint does not wait for each answer,
    but at most MAX_PUBLISHING of a client's frames wait at once, even with no rate limit."""
    from megaphone.server.consumers import MAX_PUBLISHING

    topic = unique("pipe")
    client = await connect(path(topic))
    node = await get_node()
    backend, publish = node.backend, node.backend.publish
    gate, waiting, most = asyncio.Event(), 0, 0
    changed = Signal()

    async def slow_publish(*args, **kwargs):
        nonlocal waiting, most
        waiting += 1
        most = max(most, waiting)
        changed.notify()
        await gate.wait()
        waiting -= 1
        return await publish(*args, **kwargs)

    monkeypatch.setattr(backend, "pipelines_publishes", True)
    monkeypatch.setattr(backend, "publish", slow_publish)
    frames = [f"p{i}" for i in range(MAX_PUBLISHING + 100)]
    for text in frames:
        await client.send_to(text_data=text)
    await changed.wait_until(lambda: most >= MAX_PUBLISHING)
    await loop_turns(50)  # a client past the bound would have more publishes waiting by now
    assert most == MAX_PUBLISHING  # the client's frames wait in the socket, not in the server
    gate.set()
    assert [await client.receive_from(timeout=2) for _ in frames] == frames
    await client.disconnect()
