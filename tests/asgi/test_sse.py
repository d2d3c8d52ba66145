"""Tier 2: the SSE endpoints in-process, through the project's ASGI application: the slow-client
policy (a stream that falls behind ends, and resumes from its id with nothing lost), the topic
permission, and the event encoding."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from django.test import override_settings

from example.asgi import application
from megaphone.core.message import Message
from megaphone.engine.node import get_node
from megaphone.server.sse import InvalidEventId, parse_event_id, sse_event


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
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
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
