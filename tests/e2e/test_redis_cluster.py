"""Tier 3: ``redis+cluster://`` against a private Redis Cluster (3 masters, 1 replica each).

``manage.py serve --workers 2`` with 200 JSON-protocol subscribers over 100 topics spread over
the three shards: every message delivered once, in order, with one ``SPUBLISH`` per message
(``INFO commandstats`` on the masters); a master killed (``kill -9``) mid-stream and its replica
promoted: every subscriber ends with every acknowledged message or an explicit ``recovered:
false``; slots moved live with ``redis-cli --cluster reshard`` while publishing: nothing lost,
no epoch changed. Then the backend alone, without a server: a slot moved (same epoch, the
subscription follows), a slot half moved (ASK followed, TRYAGAIN waited out), a master killed or
handed over with ``CLUSTER FAILOVER`` (a new epoch on its promoted replica).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from redis.crc import key_slot

from megaphone.backends import BackendUnavailable
from megaphone.backends.redis import _keys
from megaphone.backends.redis_cluster import RedisClusterBackend
from megaphone.core.message import Message
from megaphone.testing import Collected
from tests.conftest import ServerProcess, timeout
from tests.protocol_clients import AsyncClient
from tests.redis_server import ClusterSetup, RedisServer, wait_until

from .test_redis_scaleout import REDIS_SETTINGS_ENV, Follower, close_all, followers
from .test_redis_sentinel import Acked, check_no_silent_loss, publish_stream, reached

TOPICS = 100


def topics_on(cluster: ClusterSetup, n: int, prefix: str) -> list[str]:
    """``n`` unique topics; with n >= 30, some on every master."""
    topics = [f"{prefix}{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]
    assert n < 30 or len({cluster.owner(_keys(t)[0]).port for t in topics}) == 3
    return topics


def topics_in_slots(slots: range, n: int, prefix: str) -> list[str]:
    """``n`` unique topics whose hash slots are in ``slots``."""
    found: list[str] = []
    i = 0
    while len(found) < n:
        name = f"{prefix}{i}-{uuid.uuid4().hex[:6]}"
        if key_slot(_keys(name)[0].encode()) in slots:
            found.append(name)
        i += 1
    return found


def spublish_calls(cluster: ClusterSetup) -> int:
    return sum(n.command_calls("spublish") for n in cluster.nodes if n.process is not None)


class Stream:
    """``serve --workers 2`` on ``cluster``, two followers per topic and a publisher; the
    acknowledged publishes in :attr:`acked`."""

    def __init__(self, clients: list[Follower], publisher: AsyncClient) -> None:
        self.clients = clients
        self.publisher = publisher
        self.acked = Acked()
        self.n = 0
        self.topics = list(dict.fromkeys(c.topic for c in clients))

    async def publish(self, successes: int) -> None:
        """``successes`` more acknowledged publishes, round-robin over the topics."""
        self.n = await publish_stream(self.publisher, self.topics, self.acked, self.n, successes)

    async def everyone_has_the_last(self, seconds: float) -> None:
        last = self.acked.by_topic
        await asyncio.gather(*(c.follow(reached(last[c.topic][-1]), seconds) for c in self.clients))

    def check_every_message_once_in_order_in_one_epoch(self) -> None:
        for client in self.clients:
            expected = [(e, o, {"n": n}) for e, o, n in self.acked.by_topic[client.topic]]
            assert client.received == expected  # once each, in order, nothing else
            assert all(r.get("recovered") is not False for r in client.results)


@contextlib.asynccontextmanager
async def stream(
    server_factory: Callable[..., ServerProcess], cluster: ClusterSetup, topics: list[str]
) -> AsyncIterator[Stream]:
    env = {**REDIS_SETTINGS_ENV, "MEGAPHONE_BACKEND": cluster.url}
    server = await asyncio.to_thread(server_factory, workers=2, env=env)
    clients = await followers(server, topics, 2 * len(topics))
    try:
        publisher = await AsyncClient.open(server)
    except BaseException:
        await close_all(clients)
        raise
    try:
        yield Stream(clients, publisher)
    finally:
        await publisher.close()
        await close_all(clients)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_two_workers_deliver_every_message_once_in_order_with_one_spublish_each(
    server_factory: Callable[..., ServerProcess], redis_cluster: ClusterSetup
) -> None:
    topics = topics_on(redis_cluster, TOPICS, "c")
    async with stream(server_factory, redis_cluster, topics) as s:
        before = spublish_calls(redis_cluster)
        await s.publish(3 * TOPICS)
        assert not s.acked.failures
        await s.everyone_has_the_last(60)
        s.check_every_message_once_in_order_in_one_epoch()
        assert spublish_calls(redis_cluster) - before == 3 * TOPICS


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_master_killed_mid_stream_loses_nothing_silently(
    server_factory: Callable[..., ServerProcess], redis_cluster: ClusterSetup
) -> None:
    topics = topics_on(redis_cluster, TOPICS, "k")
    async with stream(server_factory, redis_cluster, topics) as s:
        await s.publish(2 * TOPICS)
        victim = redis_cluster.owner(_keys(topics[0])[0])
        slot = key_slot(_keys(topics[0])[0].encode())
        on_victim = [t for t in topics if redis_cluster.owner(_keys(t)[0]) is victim]
        victim.stop()  # kill -9
        # Publishing goes on through the failover (loudly refused on the lost shard until its
        # replica is promoted), and resumes by itself.
        while not await asyncio.to_thread(redis_cluster.failed_over(slot, victim.port)):
            await s.publish(20)
        await s.publish(2 * TOPICS)
        for topic in topics:  # a new epoch on the lost shard's topics, and there only
            epochs = {e for e, _, _ in s.acked.by_topic[topic]}
            assert len(epochs) == (2 if topic in on_victim else 1), topic
        await s.everyone_has_the_last(60)
        for client in s.clients:
            check_no_silent_loss(client, s.acked.by_topic[client.topic])
            if client.topic not in on_victim:
                assert all(r.get("recovered") is not False for r in client.results)
        await s.publish(TOPICS)  # every client is live: one more message each, received
        await s.everyone_has_the_last(30)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_slots_resharded_live_lose_nothing_and_keep_their_epochs(
    server_factory: Callable[..., ServerProcess], redis_cluster: ClusterSetup
) -> None:
    source, target = redis_cluster.masters()[:2]
    first = min(start for start, _, port, _ in redis_cluster.slots() if port == source.port)
    moving = topics_in_slots(range(first, first + 10), 20, "m")  # reshard moves these first
    topics = moving + topics_on(redis_cluster, 40, "s")
    async with stream(server_factory, redis_cluster, topics) as s:
        await s.publish(len(topics))
        resharding = asyncio.ensure_future(
            asyncio.to_thread(redis_cluster.reshard, source, target, 10)
        )
        while not resharding.done():  # publishing all along
            await s.publish(10)
        await resharding
        assert all(redis_cluster.owner(_keys(t)[0]) is target for t in moving)
        await s.publish(2 * len(topics))
        await s.everyone_has_the_last(60)
        s.check_every_message_once_in_order_in_one_epoch()
        # The workers' subscriptions moved with the slots: on the new owner now, not the old.
        channels = [f"megaphone:0:{{{t}}}" for t in moving]
        assert all(redis_cluster.shard_subscribers(target, channels).values())
        assert not any(redis_cluster.shard_subscribers(source, channels).values())


# The backend alone -----------------------------------------------------------------------


async def publish_until_it_works(backend: RedisClusterBackend, topic: str, data: str) -> Message:
    """Publish, retried while the backend says (loudly) that it cannot."""
    deadline = time.monotonic() + timeout(30)
    while True:
        try:
            return await backend.publish(topic, data)
        except BackendUnavailable:
            assert time.monotonic() < deadline, "the cluster did not recover in time"
            await asyncio.sleep(0.1)


def tryagains(node: RedisServer) -> int:
    """How many TRYAGAIN errors ``node`` answered (INFO errorstats)."""
    stats = node.info("errorstats").get("errorstat_TRYAGAIN")
    return int(stats["count"]) if isinstance(stats, dict) else 0


def other_master(cluster: ClusterSetup, than: RedisServer) -> RedisServer:
    return next(m for m in cluster.masters() if m is not than)


async def test_a_moved_slot_keeps_its_epoch_and_its_subscription(
    redis_cluster: ClusterSetup,
) -> None:
    received: Collected[Message] = Collected()
    backend = RedisClusterBackend(redis_cluster.url)
    await backend.start(received.append)
    try:
        await backend.subscribe("t")
        before = await backend.publish("t", "before")
        slot = key_slot(_keys("t")[0].encode())
        owner = redis_cluster.owner_of_slot(slot)
        await asyncio.to_thread(redis_cluster.move_slot, slot, other_master(redis_cluster, owner))
        after = await backend.publish("t", "after")  # MOVED, then the new owner
        assert (after.epoch, after.offset) == (before.epoch, 2)
        await received.wait_for(2, timeout=10)
        assert [(m.epoch, m.offset, m.payload) for m in received] == [
            (before.epoch, 1, "before"),
            (before.epoch, 2, "after"),
        ]
        assert (await backend.listened_topics()).get("t") == 1
    finally:
        await backend.stop()


async def test_calls_on_a_slot_half_moved_follow_ask_and_wait_out_tryagain(
    redis_cluster: ClusterSetup,
) -> None:
    """Mid-migration, the keys on the importing node: a presence read (its two keys there) goes
    through ASK; a publish (the topic's ``ids`` key exists nowhere) meets TRYAGAIN until the
    slot is the new owner's, then runs there once, in the same epoch."""
    backend = RedisClusterBackend(redis_cluster.url)
    await backend.start(lambda message: None)
    try:
        store = backend.presence_store
        assert store is not None
        before = await backend.publish("t", "before")
        await store.presence_add("t", "c1", {"user": "a"})
        slot = key_slot(_keys("t")[0].encode())
        target = other_master(redis_cluster, redis_cluster.owner_of_slot(slot))
        source = await asyncio.to_thread(redis_cluster.begin_move, slot, target)
        assert await store.presence("t") == {"c1": {"user": "a"}}  # ASK, then ASKING there
        publishing = asyncio.ensure_future(backend.publish("t", "during"))
        await asyncio.to_thread(wait_until, lambda: tryagains(target) > 0, 10, "TRYAGAIN")
        assert not publishing.done()  # retrying, not failed
        await asyncio.to_thread(redis_cluster.finish_move, slot, target, source)
        during = await publishing
        assert (during.epoch, during.offset) == (before.epoch, 2)
        assert [m.payload for m in (await backend.history("t")).messages] == ["before", "during"]
    finally:
        await backend.stop()


@pytest.mark.parametrize("how", ["kill -9", "CLUSTER FAILOVER"])
async def test_a_lost_master_is_followed_to_its_promoted_replica_in_a_new_epoch(
    redis_cluster: ClusterSetup, how: str
) -> None:
    received: Collected[Message] = Collected()
    backend = RedisClusterBackend(redis_cluster.url)
    await backend.start(received.append)
    try:
        await backend.subscribe("t")
        before = await backend.publish("t", "before")
        slot = key_slot(_keys("t")[0].encode())
        victim = redis_cluster.owner_of_slot(slot)
        if how == "kill -9":
            victim.stop()
        else:  # planned: the replica catches up, then takes over
            replica = redis_cluster.replica_of(victim)
            with replica.client() as client:
                client.execute_command("CLUSTER", "FAILOVER")
        after = await publish_until_it_works(backend, "t", "after")
        assert after.epoch != before.epoch and after.offset == 1
        await received.wait_for(2, timeout=30)
        assert [(m.epoch, m.offset, m.payload) for m in received] == [
            (before.epoch, 1, "before"),
            (after.epoch, 1, "after"),
        ]
        wait_until(redis_cluster.failed_over(slot, victim.port), 30, "failover")
        await backend.ping()
    finally:
        await backend.stop()
