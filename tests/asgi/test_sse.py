"""Tier 2: the SSE endpoints in-process, through the project's ASGI application: the slow-client
policy (a stream that falls behind ends, and resumes from its id with nothing lost), the topic
permission, and the event encoding."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth import get_user_model
from django.test import override_settings

from example.asgi import application
from megaphone.core.message import Message
from megaphone.engine.node import get_node
from megaphone.server.auth import close_user_connections
from megaphone.server.sse import InvalidEventId, parse_event_id, sse_event
from megaphone.server.tokens import issue_token
from tests.conftest import timeout


class AsgiStream:
    """One request to the application; its sends can be held, as by a client that stops
    reading."""

    def __init__(self, path: str, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        self.inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.outbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.reading = asyncio.Event()
        self.reading.set()
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path.partition("?")[0],
            "raw_path": path.partition("?")[0].encode(),
            "query_string": path.partition("?")[2].encode(),
            "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), *(headers or [])],
            "client": ("127.0.0.1", 5000),
            "server": ("127.0.0.1", 80),
        }
        self.inbox.put_nowait({"type": "http.request", "body": b"", "more_body": False})
        self.task = asyncio.ensure_future(application(scope, self.inbox.get, self._send))

    async def _send(self, event: dict[str, Any]) -> None:
        await self.reading.wait()
        await self.outbox.put(event)

    async def start(self) -> int:
        event = await asyncio.wait_for(self.outbox.get(), 5)
        assert event["type"] == "http.response.start"
        return int(event["status"])

    async def body(self) -> tuple[bytes, bool]:
        """The next body piece, and whether more follows."""
        event = await asyncio.wait_for(self.outbox.get(), 5)
        return event["body"], event.get("more_body", False)

    async def until_end(self) -> bytes:
        received = b""
        more = True
        while more:
            body, more = await self.body()
            received += body
        return received

    async def leave(self) -> None:
        self.inbox.put_nowait({"type": "http.disconnect"})
        await asyncio.wait_for(self.task, 5)


def ids(body: bytes) -> list[int]:
    return [int(line.rsplit(b":", 1)[1]) for line in body.split(b"\n") if line.startswith(b"id: ")]


@override_settings(MEGAPHONE={"OUTBOX_MAX_MESSAGES": 5, "PERMISSIONS": None})
async def test_a_stream_that_falls_behind_ends_and_resumes_from_its_id() -> None:
    topic = f"broadcast.slow-{uuid.uuid4().hex[:8]}"
    node = await get_node()
    slow = AsgiStream(f"/sse/broadcast/{topic}/")
    assert await slow.start() == 200
    first, _ = await slow.body()
    position = first.decode().split()[1]
    slow.reading.clear()  # the client stops reading
    for i in range(30):
        await node.publish(topic, f"m{i}")
    slow.reading.set()
    received = await slow.until_end()  # the stream ended: it fell behind
    got = ids(received)
    assert got == list(range(1, len(got) + 1)) and len(got) < 30  # a prefix, in order
    await asyncio.wait_for(slow.task, 5)
    epoch = position.split(":")[0]
    last = f"{epoch}:{got[-1] if got else 0}"
    resumed = AsgiStream(f"/sse/broadcast/{topic}/", [(b"last-event-id", last.encode())])
    assert await resumed.start() == 200
    rest = b""
    while len(ids(rest)) < 30 - len(got):
        body, _ = await resumed.body()
        rest += body
    assert ids(rest) == list(range(len(got) + 1, 31))
    await resumed.leave()


async def test_a_topic_the_client_may_not_subscribe_to_is_a_403() -> None:
    stream = AsgiStream("/sse/broadcast/user:1/")  # the owner's topic: anonymous may not
    assert await stream.start() == 403
    assert b"may not subscribe" in await stream.until_end()
    await asyncio.wait_for(stream.task, 5)


@pytest.mark.parametrize("path", ["/sse/broadcast/a%20b/", "/sse/broadcast/" + "x" * 300 + "/"])
async def test_an_invalid_topic_is_a_400(path: str) -> None:
    stream = AsgiStream(path.replace("%20", " "))
    assert await stream.start() == 400
    assert b"Bad Request" in await stream.until_end()


def test_event_encoding_splits_every_kind_of_line_break() -> None:
    message = Message("t", "a\r\nb\rc\nd", 7, "e1", 0.0)
    assert sse_event(message) == b"id: e1:7\ndata: a\ndata: b\ndata: c\ndata: d\n\n"
    assert sse_event(Message("t", b"\x00", 8, "e1", 0.0)) == (
        b"id: e1:8\nevent: binary\ndata: AA==\n\n"
    )


def test_event_ids_parse_strictly() -> None:
    assert parse_event_id("ab12:0") == ("ab12", 0)
    assert parse_event_id(" ab12:34 ") == ("ab12", 34)
    for bad in ["", "ab12", "ab12:", ":1", "ab12:-1", "ab 12:1", "ab12:1.5", "a:" + "9" * 20]:
        with pytest.raises(InvalidEventId):
            parse_event_id(bad)


@database_sync_to_async
def make_user(name: str) -> Any:
    return get_user_model().objects.create_user(name, password="a-long-test-password")


@pytest.mark.django_db(transaction=True)
async def test_a_token_opens_its_owners_topic_and_the_stream_ends_when_it_expires() -> None:
    alice = await make_user("alice")
    token = await database_sync_to_async(issue_token)(alice, ttl=1)
    own = AsgiStream(f"/sse/broadcast/user:{alice.pk}/?token={token}")
    assert await own.start() == 200
    await asyncio.wait_for(own.until_end(), timeout(5))  # ends with its token
    await asyncio.wait_for(own.task, 5)
    assert await AsgiStream(f"/sse/broadcast/?token={token}").start() == 403  # expired now
    bad = AsgiStream("/sse/broadcast/?token=garbage")
    assert await bad.start() == 403


@pytest.mark.django_db(transaction=True)
async def test_the_stream_of_a_user_who_logs_out_ends() -> None:
    bob = await make_user("bob")
    token = await database_sync_to_async(issue_token)(bob)
    stream = AsgiStream(f"/sse/broadcast/?token={token}")
    assert await stream.start() == 200
    await stream.body()  # the position: the stream is open
    await database_sync_to_async(close_user_connections)(bob)
    await asyncio.wait_for(stream.until_end(), timeout(5))
    await asyncio.wait_for(stream.task, 5)


@override_settings(MEGAPHONE={"ALLOWED_ORIGINS": ["http://app.example"]})
async def test_an_allowed_foreign_origin_gets_cors_headers() -> None:
    stream = AsgiStream("/sse/broadcast/", [(b"origin", b"http://app.example")])
    event = await asyncio.wait_for(stream.outbox.get(), 5)
    assert event["status"] == 200
    headers = dict(event["headers"])
    assert headers[b"access-control-allow-origin"] == b"http://app.example"
    assert headers[b"access-control-allow-credentials"] == b"true"
    await stream.leave()


@override_settings(MEGAPHONE={"MAX_CONNECTIONS_PER_IP": 1})
async def test_streams_and_websockets_share_the_per_address_limit() -> None:
    stream = AsgiStream("/sse/broadcast/")
    assert await stream.start() == 200
    assert await AsgiStream("/sse/broadcast/").start() == 403
    communicator = WebsocketCommunicator(application, "/ws/broadcast/")
    communicator.scope["client"] = ("127.0.0.1", 5001)  # the stream's address
    connected, _ = await communicator.connect(timeout=5)
    assert not connected
    await stream.leave()
    communicator = WebsocketCommunicator(application, "/ws/broadcast/")
    communicator.scope["client"] = ("127.0.0.1", 5001)  # the stream's address
    connected, _ = await communicator.connect(timeout=5)
    assert connected
    await communicator.disconnect()


@pytest.mark.parametrize("value", [0, -1, "15", True, None])
def test_a_heartbeat_that_is_not_a_positive_number_is_a_check_error(value: object) -> None:
    from megaphone.checks import check_settings

    with override_settings(MEGAPHONE={"SSE_HEARTBEAT": value}):
        assert "megaphone.E013" in {error.id for error in check_settings(None)}
    with override_settings(MEGAPHONE={"SSE_HEARTBEAT": 0.5}):
        assert "megaphone.E013" not in {error.id for error in check_settings(None)}


@override_settings(
    MEGAPHONE={"PERMISSIONS": [{"topics": "*", "default": "anyone", "history": "nobody"}]}
)
async def test_a_client_that_may_not_read_history_gets_a_reset_not_the_missed_messages() -> None:
    topic = f"secret-{uuid.uuid4().hex[:8]}"
    node = await get_node()
    first = await node.publish(topic, "before")
    await node.publish(topic, "the secret")
    stream = AsgiStream(
        f"/sse/broadcast/{topic}/", [(b"last-event-id", f"{first.epoch}:1".encode())]
    )
    assert await stream.start() == 200
    body, _ = await stream.body()
    assert body.startswith(b"event: reset\n") and b"the secret" not in body
    assert f"id: {first.epoch}:2\n".encode() in body
    await stream.leave()
