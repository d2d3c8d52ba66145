"""Tier 1: per-topic state is released, expired history is swept in the background, and the
in-memory history has a global bound (issue #11, class 4)."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from prometheus_client import REGISTRY

from megaphone.backends import base, memory
from megaphone.backends.memory import MemoryBackend
from megaphone.engine.node import Node
from tests.conftest import timeout
from tests.unit.test_protocol_session import Harness


@pytest.fixture(autouse=True)
def empty_store(monkeypatch: pytest.MonkeyPatch) -> None:
    """The in-memory store is process-wide: each test here starts with an empty one, so that
    counts and the global bound see only its own topics."""
    monkeypatch.setattr(memory, "_store", memory._Store())


def topic() -> str:
    return f"b-{uuid.uuid4().hex}"


def stored(name: str) -> bool:
    return name in memory._store.topics


async def released(name: str, backend: MemoryBackend) -> None:
    """Wait for the sweeps to release ``name``."""
    async with asyncio.timeout(timeout(base.MIN_EPOCH_TTL + 5)):
        while stored(name):
            await backend.sweep()
            await asyncio.sleep(0.05)


async def test_subscribe_and_read_leave_nothing_behind(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "MIN_EPOCH_TTL", 0.05)
    backend = MemoryBackend("memory://", history_size=10, history_ttl=0.05)
    await backend.start(lambda m: None)
    name = topic()
    page = await backend.history(name, 0, 0)  # a read creates nothing
    assert page.offset == 0 and page.complete and not stored(name)
    await backend.subscribe(name)
    epoch = (await backend.history(name, 0, 0)).epoch
    assert (await backend.history(name, 0, 0)).epoch == epoch  # stable while subscribed
    await backend.unsubscribe(name)
    # Kept a while, so that a client that lost its connection resumes in its epoch...
    assert (await backend.history(name, 0, 0)).epoch == epoch
    await released(name, backend)  # ...then released by the sweeps, with nobody reading
    await backend.presence_add(name, "c1", {})
    await backend.presence_remove(name, "c1")
    await backend.subscribe(name)
    await backend.stop()  # a stopped backend holds nothing either
    await released(name, backend)


async def test_a_topic_with_history_is_released_by_the_sweep_once_it_expires() -> None:
    backend = MemoryBackend("memory://", history_size=10, history_ttl=0.05)
    await backend.start(lambda m: None)
    name, held = topic(), topic()
    await backend.subscribe(held)
    kept = await backend.publish(held, "x")
    await backend.publish(name, "x")
    assert memory._store.history_bytes == 2 * memory._cost(kept)
    await asyncio.sleep(0.1)
    assert stored(name)  # nothing happens to it before a sweep...
    while await backend.sweep():
        pass
    assert memory._store.history_bytes == 0  # ...which drops the expired message unread...
    await released(name, backend)  # ...and, a while later, the topic
    page = await backend.history(held, 0)  # a subscribed topic keeps its position
    assert (page.offset, page.epoch, page.messages, page.complete) == (1, kept.epoch, [], False)
    await backend.stop()


def test_a_sweep_does_a_bounded_amount_of_work() -> None:
    store, now = memory._Store(), time.time()
    for i in range(60):
        state = store.topic(f"t{i}", 1.0, 2.0, now)
        store.append(state, memory.Message(f"t{i}", "x", 1, state.epoch, now))
        store.settle(f"t{i}", state, now)
    cost = memory._cost(memory.Message("t", "x", 1, "e", now))
    assert store.sweep(now + 0.5, 100) is False  # nothing due yet
    # A topic visited and a message dropped are a unit of work each: 50 topics this time...
    assert store.sweep(now + 1.5, 100) is True  # ...more is due: the caller yields, calls again
    assert store.history_bytes == 10 * cost
    assert store.sweep(now + 1.5, 100) is False
    assert store.history_bytes == 0 and len(store.topics) == 60
    assert store.sweep(now + 2.5, 50) is True  # released once unused long enough
    assert store.sweep(now + 2.5, 50) is False
    assert store.topics == {}


async def test_the_node_sweeps_in_the_background(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "MIN_EPOCH_TTL", 0.05)
    node = Node(MemoryBackend("memory://", history_size=10, history_ttl=0.05))
    await node.start()
    name = topic()
    await node.publish(name, "x")
    async with asyncio.timeout(timeout(5)):
        while stored(name):
            await asyncio.sleep(0.02)
    await node.stop()


async def test_history_over_the_global_bound_loses_its_oldest_messages_first() -> None:
    payload = "x" * 1000
    cost = memory._cost(memory.Message("t", payload, 1, "e", 0.0))
    backend = MemoryBackend(
        "memory://", history_size=100, history_ttl=60, history_max_bytes=10 * cost
    )
    await backend.start(lambda m: None)
    old, new = topic(), topic()
    evictions = REGISTRY.get_sample_value("megaphone_history_evictions_total") or 0
    for _ in range(5):
        await backend.publish(old, payload)
    for _ in range(8):
        await backend.publish(new, payload)
    assert memory._store.history_bytes <= 10 * cost
    assert REGISTRY.get_sample_value("megaphone_history_evictions_total") == evictions + 3
    page = await backend.history(old, 0)
    assert [m.offset for m in page.messages] == [4, 5] and not page.complete
    assert (await backend.history(old, 3)).complete
    page = await backend.history(new, 0)
    assert len(page.messages) == 8 and page.complete
    for _ in range(2):
        await backend.publish(new, payload)
    page = await backend.history(old, 0)  # every message evicted: it says so
    assert (page.messages, page.offset, page.complete) == ([], 5, False)
    await backend.stop()


async def test_recovery_across_an_evicted_message_says_recovered_false() -> None:
    h = Harness()
    cost = memory._cost(memory.Message("t", "m", 1, "e", 0.0))
    h.node.backend.history_max_bytes = 2 * cost
    await h.start()
    first = await h.node.publish(h.topic, "m")
    await h.node.publish(h.topic, "m")
    await h.node.publish(h.topic, "m")  # evicts offset 1
    since = {"offset": 0, "epoch": first.epoch}
    await h.request(op="subscribe", id=1, topic=h.topic, since=since)
    (reply,) = await h.frames(1)
    assert reply["result"]["recovered"] is False
    await h.request(op="unsubscribe", id=2, topic=h.topic)
    await h.request(op="subscribe", id=3, topic=h.topic, since={**since, "offset": 1})
    frames = await h.frames(5)
    assert frames[2]["result"]["recovered"] is True and frames[2]["result"]["missed"] == 2
    assert [f["offset"] for f in frames[3:]] == [2, 3]
    await h.stop()


def test_epochs_live_as_long_as_their_history_and_never_forever() -> None:
    assert base.epoch_ttl(1000, 600.0) == 600.0
    assert base.epoch_ttl(0, 600.0) == base.MIN_EPOCH_TTL  # no history: a short while
    assert base.epoch_ttl(1000, 0.5) == base.MIN_EPOCH_TTL
