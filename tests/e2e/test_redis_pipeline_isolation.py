"""Tier 3: in the Redis backend's pipeline, a failed call fails alone (real private Redis).

Many callers' script calls go to Redis as one pipeline. One call Redis cannot take (an argument
that is not valid Unicode) or that Redis refuses (a script error) must fail that call alone, with
a clear error, while the others of the same pipeline are applied; and the pipeline task must go on
serving later calls, so nothing is stranded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from megaphone.backends import BackendUnavailable
from megaphone.backends.redis import RedisBackend
from megaphone.core.decoding import InvalidText
from megaphone.core.message import Message
from megaphone.testing import unique
from tests.conftest import timeout
from tests.redis_server import RedisServer


@pytest.fixture
async def backend(redis_server: RedisServer) -> AsyncIterator[RedisBackend]:
    backend = RedisBackend(redis_server.url, history_size=100, history_ttl=60)
    await backend.start(lambda message: None)
    yield backend
    await backend.stop()


async def test_a_failed_call_fails_alone_and_the_pipeline_goes_on(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    topic, refused = (unique("iso") for _ in range(2))
    with redis_server.client() as client:  # a key of the wrong type: Redis fails its script
        client.set(f"megaphone:{{{refused}}}:meta", "not a hash")
    # Called in the same loop turn: one pipeline, the bad calls between the good ones.
    calls = [
        backend.publish(topic, "one"),
        backend.publish(topic, "bad msg_id", msg_id="m\ud800"),
        backend.publish(topic, "two", msg_id="fine"),
        backend.publish(refused, "refused by Redis"),
        backend.publish(topic, "bad \udc00 text"),
        backend.publish(topic, "three"),
    ]
    outcomes = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), timeout(5))
    for index in (1, 4):
        assert isinstance(outcomes[index], InvalidText), outcomes[index]
        assert "not valid Unicode" in str(outcomes[index])
    assert isinstance(outcomes[3], BackendUnavailable), outcomes[3]
    assert "WRONGTYPE" in str(outcomes[3]) and f"publish on {refused!r}" in str(outcomes[3])
    good = [outcomes[0], outcomes[2], outcomes[5]]
    assert all(isinstance(message, Message) for message in good), outcomes
    assert [m.offset for m in good] == [1, 2, 3]  # type: ignore[union-attr]

    # The pipeline task is alive: later calls are served, the history holds the good ones only.
    later = await asyncio.wait_for(backend.publish(topic, "four"), timeout(5))
    assert later.offset == 4
    page = await asyncio.wait_for(backend.history(topic), timeout(5))
    assert [m.payload for m in page.messages] == ["one", "two", "three", "four"]


async def test_a_history_entry_that_is_not_valid_utf8_is_skipped_not_fatal(
    backend: RedisBackend, redis_server: RedisServer
) -> None:
    """Only Megaphone writes valid text; an entry written by anything else (invalid UTF-8) must
    not fail every read of the topic's history: it is skipped, leaving a gap readers report."""
    topic = unique("iso")
    first = await backend.publish(topic, "one")
    with redis_server.client() as client:
        history, meta = f"megaphone:{{{topic}}}:history", f"megaphone:{{{topic}}}:meta"
        client.xadd(history, {"t": "1.0", "k": "t", "p": b"\xed\xa0\x80"}, id="2-0")
        client.hset(meta, "offset", 2)
    await backend.publish(topic, "three")
    page = await asyncio.wait_for(backend.history(topic), timeout(5))
    assert [(m.offset, m.payload) for m in page.messages] == [(1, "one"), (3, "three")]
    assert page.epoch == first.epoch
