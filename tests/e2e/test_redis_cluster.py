"""Tier 3: ``redis+cluster://`` against a private Redis Cluster (3 masters, 1 replica each).

``manage.py serve --workers 2`` with 200 JSON-protocol subscribers over 100 topics spread over
the three shards: every message delivered once, in order, with one ``SPUBLISH`` per message
(``INFO commandstats`` on the masters); a master killed (``kill -9``) mid-stream and its replica
promoted: every subscriber ends with every acknowledged message or an explicit ``recovered:
false``; slots moved live with ``redis-cli --cluster reshard`` while publishing: nothing lost,
no epoch changed. Then the backend alone, without a server, across the same two events.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

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
PER_TOPIC = 2


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


async def serve(
    server_factory: Callable[..., ServerProcess], cluster: ClusterSetup
) -> ServerProcess:
    env = {**REDIS_SETTINGS_ENV, "MEGAPHONE_BACKEND": cluster.url}
    return await asyncio.to_thread(server_factory, workers=2, env=env)


async def everyone_has_the_last(clients: list[Follower], acked: Acked, seconds: float) -> None:
    await asyncio.gather(
        *(c.follow(reached(acked.by_topic[c.topic][-1]), seconds) for c in clients)
    )


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_two_workers_deliver_every_message_once_in_order_with_one_spublish_each(
    server_factory: Callable[..., ServerProcess], redis_cluster: ClusterSetup
) -> None:
    server = await serve(server_factory, redis_cluster)
    topics = topics_on(redis_cluster, TOPICS, "c")
    clients = await followers(server, topics, TOPICS * PER_TOPIC)
    publisher = await AsyncClient.open(server)
    acked = Acked()
    try:
        before = spublish_calls(redis_cluster)
        await publish_stream(publisher, topics, acked, 0, 3 * TOPICS)
        assert not acked.failures
        await everyone_has_the_last(clients, acked, 60)
        for client in clients:
            expected = [(e, o, {"n": n}) for e, o, n in acked.by_topic[client.topic]]
            assert client.received == expected  # once each, in order, nothing else
            assert all(r.get("recovered") is not False for r in client.results)
        assert spublish_calls(redis_cluster) - before == 3 * TOPICS
    finally:
        await publisher.close()
        await close_all(clients)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_a_master_killed_mid_stream_loses_nothing_silently(
    server_factory: Callable[..., ServerProcess], redis_cluster: ClusterSetup
) -> None:
    server = await serve(server_factory, redis_cluster)
    topics = topics_on(redis_cluster, TOPICS, "k")
    clients = await followers(server, topics, TOPICS * PER_TOPIC)
    publisher = await AsyncClient.open(server)
    acked = Acked()
    try:
        n = await publish_stream(publisher, topics, acked, 0, 2 * TOPICS)
        victim = redis_cluster.owner(_keys(topics[0])[0])
        slot = key_slot(_keys(topics[0])[0].encode())
        on_victim = [t for t in topics if redis_cluster.owner(_keys(t)[0]) is victim]
        victim.stop()  # kill -9
        # Publishing goes on through the failover (loudly refused on the lost shard until its
        # replica is promoted), and resumes by itself.
        while not await asyncio.to_thread(redis_cluster.failed_over(slot, victim.port)):
            n = await publish_stream(publisher, topics, acked, n, 20)
        n = await publish_stream(publisher, topics, acked, n, 2 * TOPICS)
        for topic in topics:  # a new epoch on the lost shard's topics, and there only
            epochs = {e for e, _, _ in acked.by_topic[topic]}
            assert len(epochs) == (2 if topic in on_victim else 1), topic
        await everyone_has_the_last(clients, acked, 60)
        for client in clients:
            check_no_silent_loss(client, acked.by_topic[client.topic])
            if client.topic not in on_victim:
                assert all(r.get("recovered") is not False for r in client.results)
        # Every client is live: one more message each, received.
        await publish_stream(publisher, topics, acked, n, TOPICS)
        await everyone_has_the_last(clients, acked, 30)
    finally:
        await publisher.close()
        await close_all(clients)


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_slots_resharded_live_lose_nothing_and_keep_their_epochs(
    server_factory: Callable[..., ServerProcess], redis_cluster: ClusterSetup
) -> None:
    server = await serve(server_factory, redis_cluster)
    source, target = redis_cluster.masters()[:2]
    first = min(start for start, _, port, _ in redis_cluster.slots() if port == source.port)
    moving = topics_in_slots(range(first, first + 10), 20, "m")  # reshard moves these first
    staying = topics_on(redis_cluster, 40, "s")
    topics = moving + staying
    clients = await followers(server, topics, 2 * len(topics))
    publisher = await AsyncClient.open(server)
    acked = Acked()
    try:
        n = await publish_stream(publisher, topics, acked, 0, len(topics))
        resharding = asyncio.create_task(
            asyncio.to_thread(redis_cluster.reshard, source, target, 10)
        )
        while not resharding.done():  # publishing all along
            n = await publish_stream(publisher, topics, acked, n, 10)
        await resharding
        assert all(redis_cluster.owner(_keys(t)[0]) is target for t in moving)
        n = await publish_stream(publisher, topics, acked, n, 2 * len(topics))
        await everyone_has_the_last(clients, acked, 60)
        for client in clients:
            expected = [(e, o, {"n": n}) for e, o, n in acked.by_topic[client.topic]]
            assert client.received == expected  # every message once, in order, one epoch
            assert all(r.get("recovered") is not False for r in client.results)
    finally:
        await publisher.close()
        await close_all(clients)


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


async def test_a_killed_master_is_followed_to_its_promoted_replica_in_a_new_epoch(
    redis_cluster: ClusterSetup,
) -> None:
    received: Collected[Message] = Collected()
    backend = RedisClusterBackend(redis_cluster.url)
    await backend.start(received.append)
    try:
        await backend.subscribe("t")
        before = await backend.publish("t", "before")
        slot = key_slot(_keys("t")[0].encode())
        victim = redis_cluster.owner_of_slot(slot)
        victim.stop()
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
