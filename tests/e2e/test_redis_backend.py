"""Tier 3: the Redis backend against a real, private ``redis-server`` (no stand-in).

The backend must keep the in-memory backend's semantics (offsets, epochs, bounded history,
msg_id idempotency, the ``json`` flag, bytes) across processes, publish once per message, fail
loudly when Redis is down, and catch up after its pub/sub connection breaks.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from megaphone.backends import Backend, BackendUnavailable, backend_from_url, base
from megaphone.backends import redis as redis_backend
from megaphone.backends.memory import MemoryBackend
from megaphone.backends.redis import RedisBackend
from megaphone.core.message import Message
from megaphone.testing import Collected, unique
from tests.conftest import timeout
from tests.redis_server import RedisServer, wait_until


class Started:
    """Backends started for one test, each with the list of messages it was handed."""

    def __init__(self) -> None:
        self.backends: list[Backend] = []

    async def __call__(self, url: str, **options: Any) -> tuple[Backend, Collected[Message]]:
        received: Collected[Message] = Collected()
        backend = backend_from_url(url, **{"history_size": 100, "history_ttl": 60, **options})
        await backend.start(received.append)
        self.backends.append(backend)
        return backend, received

    async def stop(self) -> None:
        for backend in self.backends:
            await backend.stop()


@pytest.fixture
async def start() -> AsyncIterator[Started]:
    started = Started()
    yield started
    await started.stop()


async def until(condition: Callable[[], bool], seconds: float = 5) -> None:
    deadline = time.monotonic() + timeout(seconds)
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def summary(message: Message) -> tuple[Any, ...]:
    return (message.topic, message.offset, message.payload, message.json)


async def script(backend: Backend) -> list[Any]:
    """The same operations on any backend; what they return, minus topics, epochs and times."""
    out: list[Any] = []

    def summary(message: Message) -> tuple[Any, ...]:
        return (message.offset, message.payload, message.json)

    a, b, quiet = unique("a"), unique("b"), unique("$events")
    for i in range(7):
        message = await backend.publish(a, f"m{i}", msg_id=f"id{i}")
        out.append(summary(message))
    out.append(summary(await backend.publish(a, "retry", msg_id="id6")))  # still in history
    out.append(summary(await backend.publish(a, "retry", msg_id="id0")))  # trimmed: new
    out.append(summary(await backend.publish(b, b"\x00\n\xff", json=False)))
    out.append(summary(await backend.publish(b, '{"x": [1, "é"]}', json=True)))
    for since, limit in [(0, None), (3, None), (3, 2), (5, 0), (8, None), (50, None)]:
        page = await backend.history(a, since, limit)
        out.append(([summary(m) for m in page.messages], page.offset, page.complete))
    out.append([summary(m) for m in (await backend.history(b)).messages])
    # A topic with no history (like the node's "$" topics): offsets go on, nothing is kept,
    # so a msg_id is not remembered either.
    for _ in range(2):
        out.append(summary(await backend.publish(quiet, "e", msg_id="same")))
    page = await backend.history(quiet)
    out.append((page.messages, page.offset, page.complete))
    page = await backend.history(unique("never"))
    out.append((page.messages, page.offset, page.complete))
    return out


def limits(topic: str) -> tuple[int, float]:
    return (0, 0.0) if topic.startswith("$") else (5, 60.0)


async def test_same_results_as_the_memory_backend(redis_server: RedisServer, start) -> None:
    memory = MemoryBackend("memory://", limits=limits)
    await memory.start(lambda m: None)
    try:
        expected = await script(memory)
    finally:
        await memory.stop()
    backend, _ = await start(redis_server.url, limits=limits)
    assert isinstance(backend, RedisBackend)
    assert await script(backend) == expected


async def test_offsets_and_epoch_are_shared_by_every_process(
    redis_server: RedisServer, start
) -> None:
    (one, _), (two, _) = await start(redis_server.url), await start(redis_server.url)
    name = unique()
    first = await one.history(name)  # reading creates the epoch
    assert first.offset == 0 and first.messages == [] and first.complete
    published = [await (one, two)[i % 2].publish(name, str(i)) for i in range(6)]
    assert [m.offset for m in published] == [1, 2, 3, 4, 5, 6]
    assert {m.epoch for m in published} == {first.epoch}
    assert all(abs(m.time - time.time()) < 5 for m in published)  # Redis's clock
    assert [m.payload for m in (await two.history(name, 2)).messages] == ["2", "3", "4", "5"]


async def test_history_older_than_its_ttl_is_gone(redis_server: RedisServer, start) -> None:
    backend, _ = await start(redis_server.url, history_ttl=0.3)
    name = unique()
    await backend.publish(name, "old", msg_id="k")
    await asyncio.sleep(0.4)
    await backend.publish(name, "new")
    page = await backend.history(name)
    assert [m.payload for m in page.messages] == ["new"] and not page.complete
    # The expired message's msg_id is forgotten with it.
    assert (await backend.publish(name, "again", msg_id="k")).offset == 3
    await asyncio.sleep(0.4)
    page = await backend.history(name, 1)
    assert page.messages == [] and page.offset == 3 and not page.complete


async def test_fan_out_reaches_subscribed_processes_only_with_one_publish_per_message(
    redis_server: RedisServer, start
) -> None:
    (a, got_a), (b, got_b), (publisher, got_p) = [await start(redis_server.url) for _ in range(3)]
    one, two = unique(), unique()
    await a.subscribe(one)
    await a.subscribe(one)  # idempotent
    await b.subscribe(one)
    await b.subscribe(two)
    before = redis_server.command_calls("publish")
    payloads: list[str | bytes] = [f"text {i} é" if i % 2 else bytes(range(256)) for i in range(50)]
    for payload in payloads:
        await publisher.publish(one, payload)
    await publisher.publish(two, "only b")
    await got_a.wait_for(50)
    await got_b.wait_for(51)
    assert redis_server.command_calls("publish") - before == 51
    assert [m.payload for m in got_a] == payloads
    assert [m.offset for m in got_a] == list(range(1, 51))
    assert [m.kind for m in got_a[:2]] == ["binary", "text"]
    assert [m.topic for m in got_b].count(two) == 1 and got_p == []

    await a.unsubscribe(one)
    await a.unsubscribe(one)  # idempotent
    await publisher.publish(one, "after")
    await got_b.wait_for(52)
    await asyncio.sleep(0.1)  # and nothing more arrives meanwhile
    assert len(got_a) == 50


async def test_many_clients_publishing_on_a_busy_loop_never_wait_for_a_pooled_connection(
    redis_server: RedisServer, start, monkeypatch
) -> None:
    """Thousands of clients publishing (then reading history) at once while fan-out keeps the
    event loop busy: Redis answers in time, so every call succeeds, in order per topic (one
    pooled connection per call made the last ones time out waiting for a free connection)."""
    monkeypatch.setattr(redis_backend, "SOCKET_TIMEOUT", 0.5)
    backend, _ = await start(redis_server.url)
    topics = [unique() for _ in range(100)]
    busy = True

    async def fan_out() -> None:
        while busy:
            time.sleep(0.01)  # every turn of the loop holds it 10 ms, as a large fan-out does
            await asyncio.sleep(0)

    hog = asyncio.ensure_future(fan_out())
    try:
        results = await asyncio.gather(
            *(backend.publish(topic, f"m{i}") for i in range(20) for topic in topics),
            return_exceptions=True,
        )
        pages = await asyncio.gather(
            *(backend.history(topic, 10) for topic in topics for _ in range(10)),
            return_exceptions=True,
        )
    finally:
        busy = False
        await hog
    assert [r for r in results + pages if isinstance(r, BaseException)] == []
    assert all(
        [m.payload for m in page.messages] == [f"m{i}" for i in range(10, 20)] for page in pages
    )
    offsets: dict[str, list[int]] = {}
    for message in results:
        assert isinstance(message, Message)
        offsets.setdefault(message.topic, []).append(message.offset)
        assert message.payload == f"m{message.offset - 1}"
    assert all(found == list(range(1, 21)) for found in offsets.values())


async def test_forward_fans_out_a_message_numbered_elsewhere_without_storing_it(
    redis_server: RedisServer, start
) -> None:
    (a, got), (b, _) = await start(redis_server.url), await start(redis_server.url)
    name = unique()
    await a.subscribe(name)
    await b.forward(Message(name, b"\x00db", 41, "dbepoch", 1.5, json=False))
    await got.wait_for(1)
    assert summary(got[0]) == (name, 41, b"\x00db", False) and got[0].epoch == "dbepoch"
    assert (await b.history(name)).offset == 0


async def test_presence_entries_expire_unless_refreshed(redis_server: RedisServer, start) -> None:
    (a, _), (b, _) = await start(redis_server.url, presence_ttl=0.5), await start(redis_server.url)
    name = unique()
    await a.presence_add(name, "c1", {"user": "ann"})
    await a.presence_add(name, "c2", {"user": "bob"})
    assert await b.presence(name) == {"c1": {"user": "ann"}, "c2": {"user": "bob"}}
    await b.presence_remove(name, "c2")
    await b.presence_remove(name, "nobody")
    for _ in range(3):
        await asyncio.sleep(0.25)
        await a.presence_add(name, "c1", {"user": "ann", "n": 2})
    assert await b.presence(name) == {"c1": {"user": "ann", "n": 2}}
    await asyncio.sleep(0.6)
    assert await b.presence(name) == {}


async def test_everything_fails_loudly_while_redis_is_down(
    redis_server: RedisServer, start
) -> None:
    backend, _ = await start(redis_server.url)
    name = unique()
    await backend.publish(name, "up")
    redis_server.stop()
    started = time.monotonic()
    for call in (
        backend.publish(name, "down"),
        backend.history(name),
        backend.ping(),
        backend.subscribe(unique()),
        backend.presence(name),
    ):
        with pytest.raises(BackendUnavailable, match="Redis"):
            await call
    assert time.monotonic() - started < timeout(15)  # subscribe waits 5 s for pub/sub
    late, _ = await start(redis_server.url)  # starting needs no Redis; using it does
    with pytest.raises(BackendUnavailable, match="Redis"):
        await late.publish(name, "down")
    redis_server.start()
    # A publish refused meanwhile stored nothing: the first that lands is offset 1.
    assert (await once_it_answers(lambda: backend.publish(name, "back"))).offset == 1


async def once_it_answers(publish: Callable[[], Awaitable[Message]]) -> Message:
    """``publish()`` once Redis (another process, just restarted) answers again: each refusal
    is a :class:`BackendUnavailable`, never a silent success."""
    deadline = time.monotonic() + timeout(10)
    while True:
        try:
            return await publish()
        except BackendUnavailable:
            assert time.monotonic() < deadline, "Redis did not answer again in time"
            await asyncio.sleep(0.02)  # Redis is another process: poll it


async def test_a_broken_pubsub_connection_reconnects_and_delivers_what_it_missed(
    redis_server: RedisServer, start
) -> None:
    (reader, got), (publisher, _) = await start(redis_server.url), await start(redis_server.url)
    name = unique()
    await reader.subscribe(name)
    for i in range(3):
        await publisher.publish(name, f"before {i}")
    await got.wait_for(3)
    with redis_server.client() as admin:
        # Cut the pub/sub connection only: history stays, like a network blip.
        assert admin.client_kill_filter(_type="pubsub") == 1
        for i in range(20):
            admin_message = await publisher.publish(name, f"missed {i}")
    await got.wait_for(23)
    await publisher.publish(name, "live")
    await got.wait_for(24)
    await asyncio.sleep(0.1)  # and nothing more arrives meanwhile
    assert [m.offset for m in got] == list(range(1, 25))  # no gap, no duplicate
    assert got[-1].payload == "live" and admin_message.offset == 23


async def test_after_redis_restarts_empty_subscribers_get_the_new_epoch(
    redis_server: RedisServer, start
) -> None:
    (reader, got), (publisher, _) = await start(redis_server.url), await start(redis_server.url)
    name = unique()
    await reader.subscribe(name)
    old = [await publisher.publish(name, f"old {i}") for i in range(3)]
    await got.wait_for(3)
    redis_server.restart()
    new = [await once_it_answers(lambda: publisher.publish(name, "new 0"))]
    new.append(await publisher.publish(name, "new 1"))
    assert [m.offset for m in new] == [1, 2] and new[0].epoch != old[0].epoch
    await got.wait_for(5)
    await asyncio.sleep(0.1)  # and nothing more arrives meanwhile
    assert [(m.offset, m.epoch) for m in got[3:]] == [(1, new[0].epoch), (2, new[0].epoch)]


async def test_stop_closes_every_connection(redis_server: RedisServer, start) -> None:
    with redis_server.client() as admin:
        baseline = len(admin.client_list())
        backend = RedisBackend(redis_server.url)
        await backend.start(lambda m: None)
        await backend.subscribe(unique())
        await asyncio.gather(*(backend.publish(unique(), "x") for _ in range(50)))
        assert baseline < len(admin.client_list()) <= baseline + 21
        await backend.stop()
        await until(lambda: len(admin.client_list()) == baseline)


async def test_offsets_rolled_back_in_redis_start_a_new_epoch_instead_of_being_reused(
    redis_server: RedisServer, start
) -> None:
    (reader, got), (publisher, _) = await start(redis_server.url), await start(redis_server.url)
    name = unique()
    await reader.subscribe(name)
    old = [await publisher.publish(name, f"old {i}") for i in range(5)]
    await got.wait_for(5)
    meta = f"megaphone:{{{name}}}:meta"
    with redis_server.client() as admin:
        # What a failover to a lagging replica looks like: same epoch, offset back to 2.
        admin.hset(meta, "offset", 2)
        admin.client_kill_filter(_type="pubsub")
        # The reader reconnects, checks its topics and renews this one, in Redis.
        await asyncio.to_thread(
            wait_until,
            lambda: admin.hget(meta, "epoch") not in (old[0].epoch, old[0].epoch.encode()),
            10,
            "the reader renewed the topic",
        )
    new = await publisher.publish(name, "new")
    assert new.epoch != old[0].epoch and new.offset == 1
    await got.wait_for(6)
    assert (got[-1].epoch, got[-1].offset) == (new.epoch, 1)


async def test_a_subscribed_topic_keeps_its_epoch_and_a_left_one_expires(
    redis_server: RedisServer, start, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "MIN_EPOCH_TTL", 0.3)
    backend, _ = await start(redis_server.url, history_size=10, history_ttl=0.3)
    held, left = unique("held"), unique("left")
    await backend.subscribe(held)
    await backend.subscribe(left)
    first = await backend.publish(held, "x")
    await backend.unsubscribe(left)
    meta = f"megaphone:{{{held}}}:meta".encode()
    with redis_server.client() as redis:
        assert 0 < redis.pttl(meta) <= 300
        deadline = time.monotonic() + 1.0  # more than three meta TTLs, with nobody publishing
        while time.monotonic() < deadline:
            await backend.sweep()  # what the node's sweeper does about every second
            await asyncio.sleep(0.05)
        assert redis.keys(f"megaphone:{{{left}}}:*") == []
        assert redis.exists(meta) and redis.keys(f"megaphone:{{{held}}}:history") == []
    page = await backend.history(held, 0)
    assert (page.epoch, page.offset, page.complete) == (first.epoch, 1, False)


async def test_subscription_churn_leaves_no_refresh_entries_behind(
    redis_server: RedisServer, start
) -> None:
    backend, _ = await start(redis_server.url)
    assert isinstance(backend, RedisBackend)
    for _ in range(3):
        topics = [unique("churn") for _ in range(redis_backend.REFRESH_BATCH)]
        for topic in topics:
            await backend.subscribe(topic)
        for topic in topics:
            await backend.unsubscribe(topic)
        await backend.sweep()
    assert len(backend._refreshes) <= redis_backend.REFRESH_BATCH and not backend._refresh_at
