"""Tier 1: the Redis backends' pub/sub reader (:func:`megaphone.backends.redis.read_pubsub`) on a
fake connection: replies in order, a PING only after an interval of silence (however long the
replies kept coming before), and a connection that stops answering counts as broken."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from redis.exceptions import ResponseError

from megaphone.backends import redis as redis_backend
from megaphone.backends.base import BackendUnavailable
from megaphone.backends.redis import read_pubsub
from tests.conftest import timeout

INTERVAL = 0.2


class FakeConnection:
    """Replies put in :attr:`replies`; commands sent recorded in :attr:`sent`."""

    def __init__(self) -> None:
        self.replies: asyncio.Queue[Any] = asyncio.Queue()
        self.sent: list[tuple[Any, ...]] = []
        self.pinged = asyncio.Event()

    async def read_response(self, disconnect_on_error: bool = True) -> Any:
        assert not disconnect_on_error  # a deadline cancels a read: keep the connection
        reply = await self.replies.get()
        if isinstance(reply, ResponseError):
            raise reply
        return reply

    def pack_command(self, *args: Any) -> tuple[Any, ...]:
        return args

    async def send_packed_command(self, command: tuple[Any, ...], check_health: bool) -> None:
        self.sent.append(command)
        if command == ("PING",):
            self.pinged.set()


@pytest.fixture(autouse=True)
def short_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(redis_backend, "HEALTH_INTERVAL", INTERVAL)


async def test_replies_in_order_until_the_handler_says_stop() -> None:
    connection = FakeConnection()
    for reply in ([b"message", b"c", b"1"], ResponseError("no"), [b"message", b"c", b"2"], b"end"):
        connection.replies.put_nowait(reply)
    seen: list[Any] = []

    def handle(reply: Any) -> bool:
        seen.append(reply)
        return reply == b"end"

    await asyncio.wait_for(read_pubsub(connection, handle), timeout(5))  # type: ignore[arg-type]
    assert seen[0] == [b"message", b"c", b"1"] and seen[2:] == [[b"message", b"c", b"2"], b"end"]
    assert isinstance(seen[1], ResponseError)
    assert connection.sent == []


async def test_a_busy_connection_is_not_pinged_a_silent_one_is_then_counts_as_broken() -> None:
    connection = FakeConnection()
    reader = asyncio.ensure_future(read_pubsub(connection, lambda reply: False))  # type: ignore[arg-type]
    # Replies keep coming for three intervals, each well within one: never a PING.
    for _ in range(12):
        connection.replies.put_nowait([b"message", b"c", b"x"])
        await asyncio.sleep(INTERVAL / 4)
    assert connection.sent == []
    # Silent: a PING after an interval, then, unanswered, broken after another.
    await asyncio.wait_for(connection.pinged.wait(), timeout(5))
    with pytest.raises(BackendUnavailable, match="no answer to PING"):
        await asyncio.wait_for(reader, timeout(5))
    assert connection.sent == [("PING",)]


async def test_an_answered_ping_keeps_the_connection() -> None:
    connection = FakeConnection()
    reader = asyncio.ensure_future(read_pubsub(connection, lambda reply: reply == b"stop"))  # type: ignore[arg-type]
    await asyncio.wait_for(connection.pinged.wait(), timeout(5))
    connection.pinged.clear()
    connection.replies.put_nowait(b"PONG")
    await asyncio.wait_for(connection.pinged.wait(), timeout(5))  # silent again: pinged again
    connection.replies.put_nowait(b"stop")
    await asyncio.wait_for(reader, timeout(5))
    assert connection.sent == [("PING",), ("PING",)]
