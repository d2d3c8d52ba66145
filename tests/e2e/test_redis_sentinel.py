"""Tier 3: ``manage.py serve --workers 2`` on ``redis+sentinel://`` (a master, its replica and
three Sentinels, all private), while the master fails.

A stream of publishes on 100 topics with 200 JSON-protocol subscribers; the master is killed
(``kill -9``) mid-stream, or handed over with ``SENTINEL FAILOVER``, and the replica promoted.
Publishes during the failover fail loudly or succeed; publishing resumes without a restart; every
subscriber ends with every acknowledged message of its topic, or with an explicit
``recovered: false`` covering those it lacks: none silently misses one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from megaphone.backends.redis_sentinel import RedisSentinelBackend
from megaphone.testing import Collected
from tests.conftest import ServerProcess, timeout
from tests.protocol_clients import AsyncClient
from tests.redis_server import SentinelSetup

from .test_redis_scaleout import REDIS_SETTINGS_ENV, Follower, close_all, followers

TOPICS = 100
PER_TOPIC = 2


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Acked:
    """Every publish the server acknowledged: topic -> [(epoch, offset, n)], in order."""

    def __init__(self) -> None:
        self.by_topic: dict[str, list[tuple[str, int, int]]] = {}
        self.failures: list[dict[str, Any]] = []


async def publish_stream(
    publisher: AsyncClient,
    topics: list[str],
    acked: Acked,
    start: int,
    successes: int,
    *,
    deadline_s: float = 60,
) -> int:
    """Publish ``{"n": i}`` round-robin over ``topics``, one at a time, until ``successes`` of
    them were acknowledged; a refused publish must say ``backend_unavailable`` (then the
    stream goes on after a pause). Returns the next ``n``."""
    deadline = time.monotonic() + timeout(deadline_s)
    n, done = start, 0
    while done < successes:
        assert time.monotonic() < deadline, f"only {done} publishes acknowledged: {acked.failures}"
        topic = topics[n % len(topics)]
        request_id = await publisher.send(op="publish", topic=topic, data={"n": n})
        answer = await publisher.recv(30)
        assert answer.get("id") == request_id, answer
        if answer["type"] == "reply":
            result = answer["result"]
            acked.by_topic.setdefault(topic, []).append((result["epoch"], result["offset"], n))
            done += 1
        else:  # loud: an error frame with a code, never a silent drop
            assert answer["type"] == "error" and answer["code"] == "backend_unavailable", answer
            acked.failures.append(answer)
            await asyncio.sleep(0.05)
        n += 1
    return n


def check_no_silent_loss(follower: Follower, acked: list[tuple[str, int, int]]) -> None:
    """Every acknowledged message of the follower's topic was received, or a ``recovered:
    false`` reply told the follower it was past its reach; what it received is in order,
    without duplicates, and each message is the one acknowledged at its position."""
    first_epoch = acked[0][0]
    received = {(e, o): data for e, o, data in follower.received}
    assert len(received) == len(follower.received), "a message was delivered twice"
    for epoch in {e for e, _, _ in follower.received}:
        offsets = follower.offsets(epoch)
        assert offsets == sorted(offsets), f"out of order in {epoch}: {offsets}"
    told = [r for r in follower.results if r.get("recovered") is False]
    for epoch, offset, n in acked:
        if (epoch, offset) in received:
            assert received[(epoch, offset)] == {"n": n}, (epoch, offset, n)
            continue
        excused = [
            r
            for r in told
            if (r["epoch"] == epoch and r["offset"] >= offset)
            or (r["epoch"] != epoch and epoch == first_epoch)
        ]
        assert excused, f"silently missed {epoch}:{offset} (n={n}); replies {follower.results}"


def reached(last: tuple[str, int, int]) -> Callable[[Follower], bool]:
    epoch, offset, _ = last

    def done(follower: Follower) -> bool:
        if (epoch, offset) in {(e, o) for e, o, _ in follower.received}:
            return True
        return any(r["epoch"] == epoch and r["offset"] >= offset for r in follower.results)

    return done


@pytest.mark.slow
@pytest.mark.timeout(400)
@pytest.mark.parametrize("how", ["kill -9", "SENTINEL FAILOVER"])
async def test_a_master_failover_mid_stream_loses_nothing_silently(
    server_factory: Callable[..., ServerProcess], redis_sentinel: SentinelSetup, how: str
) -> None:
    server = server_factory(
        workers=2, env={**REDIS_SETTINGS_ENV, "MEGAPHONE_BACKEND": redis_sentinel.url}
    )
    topics = [unique(f"ha{i}") for i in range(TOPICS)]
    clients = await followers(server, topics, TOPICS * PER_TOPIC)
    publisher = await AsyncClient.open(server)
    acked = Acked()
    try:
        await publish_stream(publisher, topics, acked, 0, 300)
        old_master = redis_sentinel.master_port()
        if how == "kill -9":
            redis_sentinel.servers[old_master].stop()
        else:
            with redis_sentinel.sentinels[0].client() as sentinel:
                sentinel.sentinel_failover(redis_sentinel.service)
        # Publishing goes on through the failover, and resumes by itself on the new master.
        n = 300
        while not await asyncio.to_thread(redis_sentinel.failed_over(old_master)):
            n = await publish_stream(publisher, topics, acked, n, 20)
        n = await publish_stream(publisher, topics, acked, n, 200)
        first = {acked.by_topic[t][0][0] for t in topics}
        assert not first & {acked.by_topic[t][-1][0] for t in topics}, "no new epoch"
        n = await publish_stream(publisher, topics, acked, n, TOPICS)  # one more on every topic
        # (about 10 messages a topic: no outbox fills up while the clients are not read.)

        await asyncio.gather(*(c.follow(reached(acked.by_topic[c.topic][-1]), 60) for c in clients))
        for client in clients:
            check_no_silent_loss(client, acked.by_topic[client.topic])
        # Every client is live on the new master: one more message each, received.
        await publish_stream(publisher, topics, acked, n, TOPICS)
        await asyncio.gather(
            *(
                c.follow(lambda c: c.received[-1][:2] == acked.by_topic[c.topic][-1][:2], 30)
                for c in clients
            )
        )
    finally:
        await publisher.close()
        await close_all(clients)


async def test_a_sentinel_backend_follows_a_killed_master_and_changes_every_epoch(
    redis_sentinel: SentinelSetup,
) -> None:
    """Without a server: the backend's own publishes and pub/sub across a ``kill -9``."""
    received: Collected[Any] = Collected()
    backend = RedisSentinelBackend(redis_sentinel.url)
    await backend.start(received.append)
    try:
        await backend.subscribe("t")
        before = await backend.publish("t", "before")
        redis_sentinel.master().stop()
        deadline = time.monotonic() + timeout(30)
        while True:
            try:
                after = await backend.publish("t", "after")
                break
            except Exception as exc:  # BackendUnavailable, loudly, until the promotion
                assert type(exc).__name__ == "BackendUnavailable", exc
                assert time.monotonic() < deadline, "no new master in time"
                await asyncio.sleep(0.1)
        assert after.epoch != before.epoch and after.offset == 1
        await received.wait_for(2, timeout=30)
        assert [(m.epoch, m.offset, m.payload) for m in received] == [
            (before.epoch, 1, "before"),
            (after.epoch, 1, "after"),
        ]
    finally:
        await backend.stop()
