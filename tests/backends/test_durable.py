"""Durable topics are a backend wrapping another (``DurableTopics``): per topic, the durable
ones are numbered and kept by the database's history store and only fanned out by the wrapped
backend; the others never touch the database. Real parts only: the memory backend and the
test database."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

import pytest

from megaphone.backends import durable
from megaphone.backends.durable import DatabaseHistory, DurableTopics
from megaphone.backends.memory import MemoryBackend
from megaphone.core.message import Message
from megaphone.models import DurableMessage, DurableTopic
from megaphone.testing import Collected, unique

pytestmark = pytest.mark.django_db(transaction=True)


class Wrapped:
    def __init__(self) -> None:
        self.inner = MemoryBackend("memory://", history_size=10, history_ttl=60)
        self.store = DatabaseHistory(lambda topic: (10, 0.5))
        self.sweeps_store = True
        self.backend = DurableTopics(
            self.inner,
            self.store,
            durable=lambda topic: topic.startswith("d."),
            any_durable=lambda: self.sweeps_store,
        )
        self.received: Collected[Message] = Collected()


@pytest.fixture
async def wrapped() -> AsyncIterator[Wrapped]:
    w = Wrapped()
    await w.backend.start(w.received.append)
    yield w
    await w.backend.stop()


async def test_a_durable_topic_is_numbered_by_the_store_and_fanned_out_by_the_backend(
    wrapped: Wrapped,
) -> None:
    name = unique("d.orders")
    await wrapped.backend.subscribe(name)
    first = await wrapped.backend.publish(name, "a", msg_id="k")
    again = await wrapped.backend.publish(name, "a", msg_id="k")  # known: not fanned out
    assert (first.offset, again.offset) == (1, 1)
    assert await DurableTopic.objects.filter(name=name, offset=1).aexists()
    assert (await wrapped.inner.history(name)).offset == 0  # the backend numbered nothing
    page = await wrapped.backend.history(name)
    assert [m.payload for m in page.messages] == ["a"] and page.epoch == first.epoch
    await wrapped.received.wait_for(1)
    await wrapped.backend.publish(name, "b")
    await wrapped.received.wait_for(2)
    assert [(m.offset, m.payload) for m in wrapped.received] == [(1, "a"), (2, "b")]


async def test_any_other_topic_goes_to_the_wrapped_backend_alone(wrapped: Wrapped) -> None:
    name = unique("n.chat")
    message = await wrapped.backend.publish(name, "x")
    assert (await wrapped.inner.history(name)).messages == [message]
    assert not await DurableTopic.objects.filter(name=name).aexists()
    assert wrapped.backend.history_limits(name) == (10, 60)
    assert wrapped.backend.history_limits(unique("d.x")) == (10, 0.5)


async def test_sweeping_deletes_expired_durable_messages_once_a_round_is_due(
    wrapped: Wrapped, monkeypatch: pytest.MonkeyPatch
) -> None:
    name = unique("d.old")
    await wrapped.backend.publish(name, "old")
    await asyncio.sleep(0.6)  # the store's TTL (0.5 s) itself
    assert not await wrapped.backend.sweep()  # no round due yet: nothing deleted
    assert await DurableMessage.objects.filter(topic=name).aexists()
    monkeypatch.setattr(wrapped.store, "_next_round", 0.0)  # the round is due now
    wrapped.sweeps_store = False  # ... but the settings have no durable topic: not swept
    await wrapped.backend.sweep()
    assert await DurableMessage.objects.filter(topic=name).aexists()
    wrapped.sweeps_store = True
    await wrapped.backend.sweep()
    assert not await DurableMessage.objects.filter(topic=name).aexists()
    page = await wrapped.backend.history(name)
    assert (page.messages, page.offset, page.complete) == ([], 1, False)  # the row lives on
    # The round is over (one batch held every topic): the next one waits EXPIRE_INTERVAL.
    assert wrapped.store._next_round > time.monotonic() + durable.EXPIRE_INTERVAL / 2
