"""Tier 1: a protocol session over a fake socket: the history->live switch and gap filling."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from megaphone.backends.memory import MemoryBackend
from megaphone.core.ratelimit import TokenBucket
from megaphone.engine.node import Node
from megaphone.protocol.schema import message_event
from megaphone.server.connection import Connection
from megaphone.server.session import RateLimitIgnored, Session
from megaphone.testing import Signal, unique
from tests.conftest import loop_turns, timeout


class Harness:
    def __init__(self, history_size: int = 1000) -> None:
        self.node = Node(MemoryBackend("memory://", limits=lambda topic: (history_size, 600.0)))
        self.sent: list[dict[str, Any]] = []
        self.changed = Signal()
        self.connection = Connection(
            self.send, message_event, lambda: None, max_messages=10_000, max_bytes=10**8
        )
        self.session = Session(self.node, self.connection, client="c1")
        self.topic = unique("s")

    async def send(self, event: dict[str, Any]) -> None:
        self.sent.append(json.loads(event["text"]))
        self.changed.notify()

    async def start(self) -> None:
        await self.node.start()
        self.connection.start()

    async def request(self, **request: Any) -> None:
        await self.session.handle_text(json.dumps(request))

    async def frames(self, count: int) -> list[dict[str, Any]]:
        await self.changed.wait_until(lambda: len(self.sent) >= count, timeout=3)
        await loop_turns()  # and nothing more was on its way
        await self.connection.flush()
        assert len(self.sent) == count, self.sent
        return self.sent

    async def stop(self) -> None:
        await self.session.close()
        await self.connection.close()
        await self.node.stop()


def offsets(frames: list[dict[str, Any]]) -> list[int]:
    return [f["offset"] for f in frames if f["type"] == "message"]


async def test_messages_published_while_history_is_read_arrive_once_and_in_order() -> None:
    h = Harness()
    await h.start()
    first = await h.node.publish(h.topic, "old 1")
    for i in (2, 3):
        await h.node.publish(h.topic, f"old {i}")
    read_history = h.node.history

    async def racing_history(topic: str, since: int = 0, limit: int | None = None) -> Any:
        await h.node.publish(topic, "during")  # reaches the buffer *and* the history read
        page = await read_history(topic, since, limit)
        await h.node.publish(topic, "after")  # reaches the buffer only
        return page

    h.node.history = racing_history  # type: ignore[method-assign]
    since = {"offset": 1, "epoch": first.epoch}
    await h.request(op="subscribe", id=1, topic=h.topic, since=since)
    h.node.history = read_history  # type: ignore[method-assign]
    await h.node.publish(h.topic, "live")
    frames = await h.frames(6)
    assert frames[0]["type"] == "reply" and frames[0]["result"]["recovered"] is True
    assert frames[0]["result"]["missed"] == 3
    assert offsets(frames) == [2, 3, 4, 5, 6]
    assert [f["data"] for f in frames[1:]] == ["old 2", "old 3", "during", "after", "live"]
    await h.stop()


async def test_a_live_gap_is_filled_from_history() -> None:
    h = Harness()
    await h.start()
    await h.request(op="subscribe", id=1, topic=h.topic)
    await h.node.publish(h.topic, "one")
    subscription = h.session.subscriptions[h.topic]
    h.node.hub.remove(h.topic, subscription)  # the bus loses the next two messages...
    await h.node.publish(h.topic, "two")
    three = await h.node.publish(h.topic, "three")
    h.node.hub.add(h.topic, subscription)
    subscription.deliver(three)  # ...and delivers the third: a gap of one
    subscription.deliver(three)  # a duplicate, too
    await h.node.publish(h.topic, "four")
    frames = await h.frames(5)
    assert offsets(frames) == [1, 2, 3, 4]
    await h.stop()


async def test_a_gap_beyond_history_asks_the_client_to_resubscribe() -> None:
    h = Harness(history_size=1)
    await h.start()
    await h.request(op="subscribe", id=1, topic=h.topic)
    subscription = h.session.subscriptions[h.topic]
    h.node.hub.remove(h.topic, subscription)
    await h.node.publish(h.topic, "lost")
    kept = await h.node.publish(h.topic, "kept")
    h.node.hub.add(h.topic, subscription)
    subscription.deliver(kept)
    frames = await h.frames(2)
    assert frames[1] == {
        "type": "unsubscribed",
        "topic": h.topic,
        "code": "insufficient_state",
        "offset": 0,
        "epoch": kept.epoch,
    }
    assert h.topic not in h.session.subscriptions
    assert h.node.hub.subscribers(h.topic) == 0
    await h.stop()


async def test_every_protocol_subscriber_is_handed_the_same_event_object() -> None:
    node = Node(MemoryBackend("memory://"))
    await node.start()
    topic = unique("once")
    events: list[list[Any]] = [[], [], []]
    sessions = []
    changed = Signal()
    for sink in events:

        async def send(event: Any, sink: list[Any] = sink) -> None:
            sink.append(event)
            changed.notify()

        connection = Connection(send, message_event, lambda: None, max_messages=10, max_bytes=10**6)
        session = Session(node, connection, client=f"c{len(sessions)}")
        await session.handle_text(json.dumps({"op": "subscribe", "topic": topic}))
        connection.start()
        sessions.append(session)
    await node.publish(topic, "to all three")
    await changed.wait_until(lambda: all(len(sink) == 2 for sink in events), timeout=3)
    first = events[0][1]
    assert json.loads(first["text"])["type"] == "message"
    assert all(sink[1] is first for sink in events)  # one dict, encoded once, shared
    for session in sessions:
        await session.close()
        await session.connection.close()
    await node.stop()


async def test_subscribes_over_the_rate_are_refused_and_a_client_going_on_is_closed() -> None:
    h = Harness()
    now = [0.0]
    limit = TokenBucket(1.0, 3, clock=lambda: now[0])
    h.session = Session(h.node, h.connection, client="c1", subscribe_limit=limit)
    await h.start()
    await h.request(op="subscribe", id=1, topic=h.topic)
    await h.request(op="unsubscribe", id=2, topic=h.topic)
    await h.request(op="subscribe", id=3, topic=h.topic)
    await h.request(op="unsubscribe", id=4, topic=h.topic)  # over the burst: not done
    await h.request(op="ping", id=5)  # other requests are not limited
    frames = await h.frames(5)
    assert [f["type"] for f in frames[:3]] == ["reply"] * 3
    assert frames[3] == {
        "type": "error",
        "id": 4,
        "code": "rate_limited",
        "message": "subscribing or unsubscribing too fast",
    }
    assert frames[4]["type"] == "pong"
    assert h.topic in h.session.subscriptions
    now[0] = 1.0  # a token back for requests; the refusals' bucket (2 left) is full again
    await h.request(op="unsubscribe", id=6, topic=h.topic)
    for i in (7, 8, 9):
        await h.request(op="subscribe", id=i, topic=h.topic)
    with pytest.raises(RateLimitIgnored):  # the refusals' own bucket is empty too
        await h.request(op="subscribe", id=10, topic=h.topic)
    frames = await h.frames(9)
    assert frames[5]["type"] == "reply"
    assert [(f["id"], f["code"]) for f in frames[6:]] == [(i, "rate_limited") for i in (7, 8, 9)]
    assert h.session.subscriptions == {}
    await h.stop()


async def test_recovery_pacing_wakes_when_the_writer_takes_the_queue_not_on_a_timer() -> None:
    """A catch-up paused on a full outbox resumes in the loop turn the writer empties it: the
    wait is an event from the connection (a timer-driven poll would still be asleep)."""
    release = asyncio.Event()
    sent: list[Any] = []

    async def send(event: Any) -> None:
        await release.wait()  # a client not reading yet
        sent.append(event)

    node = Node(MemoryBackend("memory://", limits=lambda topic: (100, 600.0)))
    connection = Connection(send, message_event, lambda: None, max_messages=100, max_bytes=10**6)
    session = Session(node, connection, client="c1")
    connection.start()
    connection.send_text("first")  # the writer takes it and blocks in send
    await asyncio.sleep(0)
    for i in range(30):  # more than a quarter of the bound waits behind it
        connection.send_text(f"queued {i}")
    assert len(connection.outbox) == 30
    waiting = asyncio.ensure_future(session._drained())
    for _ in range(3):
        await asyncio.sleep(0)
    assert not waiting.done()  # still over a quarter full
    release.set()
    for _ in range(4):  # the writer sends "first", takes the 30, wakes the waiter
        await asyncio.sleep(0)
    assert waiting.done(), "the wait did not wake when the outbox drained"
    await waiting
    await connection.close()
    assert len(sent) >= 1


async def test_recovery_pacing_wait_ends_when_the_connection_closes() -> None:
    never = asyncio.Event()

    async def send(event: Any) -> None:
        await never.wait()

    node = Node(MemoryBackend("memory://", limits=lambda topic: (100, 600.0)))
    connection = Connection(send, message_event, lambda: None, max_messages=100, max_bytes=10**6)
    session = Session(node, connection, client="c1")
    connection.start()
    for i in range(31):
        connection.send_text(f"frame {i}")
        await asyncio.sleep(0)
    waiting = asyncio.ensure_future(session._drained())
    await asyncio.sleep(0)
    assert not waiting.done()
    await connection.close()
    async with asyncio.timeout(timeout(1)):
        await waiting
