"""Tier 3: publishes called one after the other on one topic go to Redis as one call of the
publish script (real private Redis), and each keeps what one script per publish promised: its own
offset in call order, one PUBLISH each in that order, msg_id dedupe (within the call too), history,
and a failure that fails that publish alone."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from megaphone.backends import BackendUnavailable
from megaphone.backends.redis import PUBLISH_BATCH, RedisBackend
from megaphone.core.message import Message
from megaphone.testing import unique
from tests.conftest import timeout
from tests.redis_server import RedisServer


@pytest.fixture
async def received() -> list[Message]:
    return []


@pytest.fixture
async def backend(
    redis_server: RedisServer, received: list[Message]
) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_server.url, history_size=1000, history_ttl=60)
    await backend.start(received.append)
    yield backend
    await backend.stop()


def script_calls(redis_server: RedisServer) -> int:
    """How many EVALSHA calls the server has run."""
    with redis_server.client() as client:
        stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


async def test_a_turn_of_publishes_on_one_topic_is_one_script_call_per_batch(
    backend: RedisBackend, redis_server: RedisServer, received: list[Message]
) -> None:
    topic = unique("batch")
    await asyncio.wait_for(backend.subscribe(topic), timeout(5))
    count = 2 * PUBLISH_BATCH + 50
    before = script_calls(redis_server)
    calls = [backend.publish(topic, f"m{i}") for i in range(count)]  # one loop turn
    messages = await asyncio.wait_for(asyncio.gather(*calls), timeout(10))
    assert script_calls(redis_server) - before == 3  # ceil(250 / 100), not 250

    assert [m.offset for m in messages] == list(range(1, count + 1))
    assert [m.payload for m in messages] == [f"m{i}" for i in range(count)]
    assert len({m.epoch for m in messages}) == 1
    page = await asyncio.wait_for(backend.history(topic), timeout(5))
    assert [(m.offset, m.payload) for m in page.messages] == [
        (m.offset, m.payload) for m in messages
    ]
    async with asyncio.timeout(timeout(5)):  # one PUBLISH each, in offset order
        while len(received) < count:
            await asyncio.sleep(0)
    assert [(m.offset, m.payload) for m in received] == [(m.offset, m.payload) for m in messages]


async def test_interleaved_topics_keep_call_order_and_msg_ids_dedupe_within_a_call(
    backend: RedisBackend,
) -> None:
    one, two = unique("batch"), unique("batch")
    calls = [
        backend.publish(one, "a"),
        backend.publish(one, "b", msg_id="id-b"),
        backend.publish(two, "c"),
        backend.publish(one, "d"),
        backend.publish(one, "b again", msg_id="id-b"),  # a known msg_id: the first message
        backend.publish(one, b"\x00binary"),
        backend.publish(one, '{"j":1}', json=True),
    ]
    a, b, c, d, again, binary, data = await asyncio.wait_for(asyncio.gather(*calls), timeout(5))
    assert [(m.topic, m.offset) for m in (a, b, c, d, binary, data)] == [
        (one, 1),
        (one, 2),
        (two, 1),
        (one, 3),
        (one, 4),
        (one, 5),
    ]
    assert (again.offset, again.payload, again.epoch) == (2, "b", b.epoch)
    assert binary.payload == b"\x00binary" and binary.kind == "binary"
    assert data.json and data.payload == '{"j":1}'
    page = await asyncio.wait_for(backend.history(one), timeout(5))
    assert [m.payload for m in page.messages] == ["a", "b", "d", b"\x00binary", '{"j":1}']
    assert page.messages[-1].json


async def test_a_publish_redis_fails_fails_alone_within_its_call(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    topic = unique("batch")
    await asyncio.wait_for(backend.publish(topic, "one"), timeout(5))
    await asyncio.wait_for(backend.publish(topic, "two"), timeout(5))
    with redis_server.client() as client:  # the offset goes back: the next XADD is refused
        client.hset(f"megaphone:{{{topic}}}:meta", "offset", 1)
    calls = [backend.publish(topic, text) for text in ("refused", "three", "four")]
    refused, three, four = await asyncio.wait_for(
        asyncio.gather(*calls, return_exceptions=True), timeout(5)
    )
    assert isinstance(refused, BackendUnavailable), refused
    assert "equal or smaller" in str(refused) and f"publish on {topic!r}" in str(refused)
    assert (three.offset, four.offset) == (3, 4)  # type: ignore[union-attr]
    page = await asyncio.wait_for(backend.history(topic), timeout(5))
    assert [m.payload for m in page.messages] == ["one", "two", "three", "four"]
