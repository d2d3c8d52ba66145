"""Tier 1: the in-memory backend's offsets, epochs, history bounds and cross-thread delivery."""

from __future__ import annotations

import asyncio
import threading
import uuid

import pytest

from megaphone.backends import backend_from_url, base
from megaphone.backends.memory import MemoryBackend
from megaphone.core.message import Message
from megaphone.testing import Collected


def topic() -> str:
    return f"t-{uuid.uuid4().hex}"


@pytest.fixture
async def started() -> tuple[MemoryBackend, Collected[Message]]:
    received: Collected[Message] = Collected()
    backend = MemoryBackend("memory://", history_size=5, history_ttl=60)
    await backend.start(received.append)
    yield backend, received
    await backend.stop()


async def test_offsets_are_consecutive_per_topic_and_epoch_is_stable(started) -> None:
    backend, received = started
    a, b = topic(), topic()
    offsets = [(await backend.publish(a, str(i))).offset for i in range(3)]
    assert offsets == [1, 2, 3]
    assert (await backend.publish(b, "x")).offset == 1
    assert len({m.epoch for m in received if m.topic == a}) == 1
    assert [m.offset for m in received if m.topic == a] == [1, 2, 3]


async def test_history_is_bounded_and_reports_completeness(started) -> None:
    backend, _ = started
    name = topic()
    for i in range(8):
        await backend.publish(name, str(i))
    page = await backend.history(name, since=5)
    assert [m.offset for m in page.messages] == [6, 7, 8]
    assert page.complete and page.offset == 8
    page = await backend.history(name, since=0)
    assert [m.offset for m in page.messages] == [4, 5, 6, 7, 8]  # size 5
    assert not page.complete
    page = await backend.history(name, since=8)
    assert page.messages == [] and page.complete
    assert (await backend.history(name, since=3, limit=2)).complete


async def test_history_expires_after_ttl(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(base, "MIN_EPOCH_TTL", 0.05)
    backend = MemoryBackend("memory://", history_size=100, history_ttl=0.05)
    await backend.start(lambda m: None)
    name = topic()
    await backend.subscribe(name)  # a subscribed topic keeps its epoch and offset
    first = await backend.publish(name, "old")
    await asyncio.sleep(0.1)
    page = await backend.history(name, since=0)
    assert page.messages == [] and not page.complete and page.offset == 1
    assert page.epoch == first.epoch
    await backend.unsubscribe(name)  # unused: released one TTL later, then a new epoch
    await asyncio.sleep(0.1)
    page = await backend.history(name, since=0)
    assert page.offset == 0 and page.epoch != first.epoch
    await backend.stop()


async def test_publish_from_another_thread_arrives_on_the_loop_in_order(started) -> None:
    backend, received = started
    name = topic()
    loop = asyncio.get_running_loop()
    await backend.publish(name, "first")

    def publish_from_thread() -> None:
        async def publish_many() -> None:
            other = MemoryBackend("memory://")
            for i in range(20):
                await other.publish(name, str(i))

        asyncio.run(publish_many())

    thread = threading.Thread(target=publish_from_thread)
    thread.start()
    await loop.run_in_executor(None, thread.join)
    await backend.publish(name, "last")
    await received.changed.wait_until(lambda: sum(m.topic == name for m in received) >= 22)
    offsets = [m.offset for m in received if m.topic == name]
    assert offsets == list(range(1, 23))
    assert threading.current_thread() is threading.main_thread()


def test_backend_from_url() -> None:
    assert isinstance(backend_from_url("memory://"), MemoryBackend)
    with pytest.raises(ValueError, match="unknown Megaphone backend"):
        backend_from_url("kafka://x")
