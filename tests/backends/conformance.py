"""The conformance suite every backend passes: the guarantees of :mod:`megaphone.backends.base`.

Reuse it for a backend of your own: subclass :class:`Harness` (how to build your backend, and
what it declares: shared across processes, state released when unused, can be taken down), and
a test class that inherits :class:`BackendConformance` and provides the ``harness`` fixture::

    class TestMyBackend(BackendConformance):
        @pytest.fixture
        def harness(self, my_server) -> Harness:
            return MyHarness(my_server)

Every test builds its backends through :meth:`Harness.build` (``Class(url, **options)``, like
the node does), starts them with a recording callback, and stops them at the end. Topics are
unique per test. Nothing here sleeps to let something happen: tests wait for a condition
(:func:`until`), or for a time the guarantee itself names (a TTL) and then check once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from megaphone.backends import Backend, BackendUnavailable, base
from megaphone.core.message import Message
from megaphone.testing import Collected, Signal, unique
from tests.conftest import timeout


class Harness:
    """How the suite builds, and breaks, one kind of backend. Override :meth:`build`, and the
    declarations and fault methods your backend supports."""

    #: Instances share their state as separate processes would (every instance is a "process").
    shared = False
    #: A topic unused for :func:`~megaphone.backends.base.epoch_ttl` loses its state and starts
    #: again in a new epoch (False: epochs are kept forever, e.g. in a database).
    releases_unused_topics = True
    #: History is kept apart from the server :meth:`outage` takes down (durable topics in a
    #: database over Redis): reading it must then work during the outage, not fail.
    history_survives_outage = False

    async def build(self, **options: Any) -> Backend:
        """A new, unstarted backend instance built with ``options`` (those of
        :class:`~megaphone.backends.base.BaseBackend`)."""
        raise NotImplementedError

    def outage(self) -> None:
        """Make the backend's server unreachable (skip if it has none)."""
        pytest.skip("this backend has no server to take down")

    def end_outage(self) -> None:
        """Bring the server back after :meth:`outage` (it may come back empty)."""

    def lose_everything(self) -> None:
        """Lose every topic's state at once (a server restarted empty; skip if impossible)."""
        pytest.skip("this backend cannot lose its state at once")


class Started:
    """The backends one test started, each with the messages it was handed."""

    def __init__(self, harness: Harness) -> None:
        self.harness = harness
        self.backends: list[Backend] = []
        self.received: dict[int, list[Message]] = {}
        #: Notified at each message any of them is handed.
        self.changed = Signal()

    async def __call__(self, **options: Any) -> Backend:
        backend = await self.harness.build(**{"history_size": 100, "history_ttl": 60, **options})
        received: Collected[Message] = Collected(self.changed)
        await backend.start(received.append)
        self.backends.append(backend)
        self.received[id(backend)] = received
        return backend

    def of(self, backend: Backend, topic: str) -> list[Message]:
        """What ``backend`` was handed on ``topic`` so far."""
        return [m for m in self.received[id(backend)] if m.topic == topic]

    async def stop(self) -> None:
        for backend in self.backends:
            await backend.stop()


def limits_of(size: int, ttl: float) -> Callable[[str], tuple[int, float]]:
    return lambda topic: (size, ttl)


def position(message: Message) -> tuple[int, str | bytes, bool]:
    return message.offset, message.payload, message.json


class BackendConformance:
    """The guarantees of :mod:`megaphone.backends.base`, for the backend of ``harness``."""

    @pytest.fixture
    def harness(self) -> Harness:
        raise NotImplementedError("a conformance test class provides the harness fixture")

    @pytest.fixture
    async def start(self, harness: Harness) -> AsyncIterator[Started]:
        started = Started(harness)
        try:
            yield started
        finally:
            await started.stop()

    async def pair(self, start: Started, harness: Harness, **options: Any) -> tuple[Backend, ...]:
        """Two "processes" of the backend; the same instance twice if it is not shared."""
        one = await start(**options)
        return (one, await start(**options)) if harness.shared else (one, one)

    # Lifecycle ------------------------------------------------------------------------------

    async def test_stop_returns_whenever_it_is_called(self, harness: Harness) -> None:
        """Even at once after start, while a connection is still being opened (Redis: a
        cancellation swallowed by the client's connect() left stop() waiting for ever)."""
        for attempt in range(40):
            backend = await harness.build()
            await backend.start(lambda message: None)
            await asyncio.sleep(attempt % 5 * 0.0005)  # stop at different steps of starting
            began = time.monotonic()
            # (wait_for may return late, not raise: the stop it cancels can still finish.)
            await asyncio.wait_for(backend.stop(), timeout(2))
            assert time.monotonic() - began < timeout(1), f"stop #{attempt} hung"

    # Ordering, offsets, epochs --------------------------------------------------------------

    async def test_offsets_are_consecutive_per_topic_in_one_epoch(self, start: Started) -> None:
        backend = await start()
        a, b = unique("a"), unique("b")
        published = [await backend.publish(a, f"m{i}") for i in range(5)]
        assert [m.offset for m in published] == [1, 2, 3, 4, 5]
        assert len({m.epoch for m in published}) == 1
        assert (await backend.publish(b, "x")).offset == 1
        page = await backend.history(a)
        assert (page.offset, page.epoch) == (5, published[0].epoch)
        assert [m.payload for m in page.messages] == [f"m{i}" for i in range(5)]

    async def test_publishes_from_every_process_share_one_sequence(
        self, start: Started, harness: Harness
    ) -> None:
        one, two = await self.pair(start, harness)
        name = unique()
        published = await asyncio.gather(
            *((one, two)[i % 2].publish(name, str(i)) for i in range(20))
        )
        assert sorted(m.offset for m in published) == list(range(1, 21))
        assert len({m.epoch for m in published}) == 1

    async def test_subscribers_in_every_process_get_each_message_once_in_order(
        self, start: Started, harness: Harness
    ) -> None:
        one, two = await self.pair(start, harness)
        name = unique()
        await one.subscribe(name)
        await two.subscribe(name)
        await one.subscribe(name)  # idempotent: still once
        for i in range(10):
            await two.publish(name, f"m{i}")
        for backend in {id(b): b for b in (one, two)}.values():

            def got_all(backend: Backend = backend) -> bool:
                return len(start.of(backend, name)) >= 10

            await start.changed.wait_until(got_all)
            assert [m.offset for m in start.of(backend, name)] == list(range(1, 11))
        await one.unsubscribe(name)
        await one.unsubscribe(name)  # idempotent

    async def test_payloads_keep_their_type_and_json_flag(self, start: Started) -> None:
        backend = await start()
        name = unique()
        await backend.subscribe(name)
        sent: list[tuple[str | bytes, bool]] = [
            ("text é", False),
            (b"\x00\n\xff", False),
            ('{"x": [1]}', True),
            ("", False),
        ]
        for payload, json in sent:
            await backend.publish(name, payload, json=json)
        expected = [(i + 1, p, j) for i, (p, j) in enumerate(sent)]
        assert [position(m) for m in (await backend.history(name)).messages] == expected
        await start.changed.wait_until(lambda: len(start.of(backend, name)) == 4)
        assert [position(m) for m in start.of(backend, name)] == expected

    async def test_forward_fans_out_a_message_numbered_elsewhere_without_storing_it(
        self, start: Started, harness: Harness
    ) -> None:
        one, two = await self.pair(start, harness)
        name = unique()
        await two.subscribe(name)
        message = Message(name, "from elsewhere", 42, "e1", time.time(), json=False)
        await one.forward(message)
        await start.changed.wait_until(lambda: bool(start.of(two, name)))
        (got,) = start.of(two, name)
        assert (got.offset, got.epoch, got.payload) == (42, "e1", "from elsewhere")
        assert (await one.history(name)).offset == 0

    # History and recovery edge cases --------------------------------------------------------

    async def test_history_since_latest_or_beyond_is_empty_and_complete(
        self, start: Started
    ) -> None:
        backend = await start()
        name = unique()
        for i in range(3):
            await backend.publish(name, str(i))
        for since in (3, 4, 1000):
            page = await backend.history(name, since)
            assert (page.messages, page.offset, page.complete) == ([], 3, True)

    async def test_history_of_a_topic_never_published_to(self, start: Started) -> None:
        backend = await start()
        page = await backend.history(unique("never"), 0)
        assert (page.messages, page.offset, page.complete) == ([], 0, True)
        assert page.epoch

    async def test_history_since_and_limit(self, start: Started) -> None:
        backend = await start()
        name = unique()
        for i in range(6):
            await backend.publish(name, str(i))
        page = await backend.history(name, 2)
        assert [m.offset for m in page.messages] == [3, 4, 5, 6] and page.complete
        page = await backend.history(name, 2, limit=2)
        assert [m.offset for m in page.messages] == [3, 4] and page.complete
        assert page.offset == 6
        page = await backend.history(name, 2, limit=0)
        assert page.messages == [] and page.offset == 6

    async def test_history_is_trimmed_to_its_size_and_says_it_is_incomplete(
        self, start: Started
    ) -> None:
        backend = await start(limits=limits_of(5, 60.0))
        name = unique()
        for i in range(8):
            await backend.publish(name, str(i))
        page = await backend.history(name, 0)
        assert [m.offset for m in page.messages] == [4, 5, 6, 7, 8]
        assert not page.complete and page.offset == 8
        page = await backend.history(name, 3)  # nothing missing after offset 3
        assert [m.offset for m in page.messages] == [4, 5, 6, 7, 8] and page.complete
        page = await backend.history(name, 2)  # offset 3 was trimmed
        assert not page.complete

    async def test_history_older_than_its_ttl_is_gone_but_the_position_stays(
        self, start: Started
    ) -> None:
        backend = await start(limits=limits_of(100, 0.3))
        name = unique()
        await backend.subscribe(name)  # a subscribed topic keeps its epoch and offset
        first = await backend.publish(name, "old", msg_id="k")
        await asyncio.sleep(timeout(0.3) + 0.2)  # the TTL itself
        await backend.sweep()
        page = await backend.history(name, 0)
        assert (page.messages, page.offset, page.complete) == ([], 1, False)
        assert page.epoch == first.epoch
        again = await backend.publish(name, "new", msg_id="k")  # its msg_id expired too
        assert (again.offset, again.epoch) == (2, first.epoch)

    async def test_a_topic_without_history_numbers_but_keeps_nothing(self, start: Started) -> None:
        backend = await start(limits=limits_of(0, 0.0))
        name = unique("$events")
        assert [(await backend.publish(name, "e", msg_id="same")).offset for _ in range(2)] == [
            1,
            2,
        ]  # no history: a msg_id is not remembered either
        page = await backend.history(name, 0)
        assert (page.messages, page.offset) == ([], 2)
        assert not page.complete

    # Epochs ---------------------------------------------------------------------------------

    async def test_an_unused_topic_is_released_and_starts_a_new_epoch(
        self, start: Started, harness: Harness, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        monkeypatch.setattr(base, "MIN_EPOCH_TTL", 0.2)
        backend = await start(limits=limits_of(10, 0.2))
        name = unique()
        first = await backend.publish(name, "m")
        await asyncio.sleep(timeout(0.2) + 0.3)  # epoch_ttl itself
        while await backend.sweep():
            pass
        page = await backend.history(name, 1)
        if not harness.releases_unused_topics:
            assert (page.offset, page.epoch, page.complete) == (1, first.epoch, True)
            return
        assert page.offset == 0 and page.epoch != first.epoch
        assert page.complete  # since=1 in the new epoch: the caller compares epochs
        again = await backend.publish(name, "m")
        assert again.offset == 1 and again.epoch != first.epoch

    async def test_losing_every_topic_at_once_starts_new_epochs(
        self, start: Started, harness: Harness
    ) -> None:
        backend = await start()
        name = unique()
        await backend.subscribe(name)
        first = await backend.publish(name, "before")
        harness.lose_everything()
        page = await self._answer(backend.history, name, 0)
        assert page.offset == 0 and page.epoch != first.epoch
        after = await backend.publish(name, "after")
        assert after.offset == 1 and after.epoch == page.epoch != first.epoch
        await start.changed.wait_until(
            lambda: any(m.payload == "after" for m in start.of(backend, name)), 10
        )
        # The subscriber sees the new epoch, after whatever it got of the old one.
        epochs = [m.epoch for m in start.of(backend, name)]
        assert epochs == sorted(epochs, key=lambda epoch: epoch == after.epoch)

    @staticmethod
    async def _answer(call: Callable[..., Any], *args: Any, seconds: float = 10) -> Any:
        """``call(*args)``, retried while the backend is (still) unavailable."""
        deadline = time.monotonic() + timeout(seconds)
        while True:
            try:
                return await call(*args)
            except BackendUnavailable:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.05)

    # Idempotency ----------------------------------------------------------------------------

    async def test_the_same_msg_id_twice_is_published_once(
        self, start: Started, harness: Harness
    ) -> None:
        one, two = await self.pair(start, harness)
        name, other = unique(), unique()
        await one.subscribe(name)
        first = await one.publish(name, "a", msg_id="id-1")
        retry = await two.publish(name, "a (retry)", msg_id="id-1")
        assert (retry.offset, retry.epoch, retry.payload) == (first.offset, first.epoch, "a")
        nxt = await two.publish(name, "b", msg_id="id-2")
        assert nxt.offset == 2
        assert (await one.publish(other, "c", msg_id="id-1")).offset == 1  # per topic
        page = await one.history(name)
        assert [m.payload for m in page.messages] == ["a", "b"]
        await start.changed.wait_until(lambda: len(start.of(one, name)) == 2)
        assert [m.payload for m in start.of(one, name)] == ["a", "b"]

    async def test_a_msg_id_trimmed_from_history_is_new_again(self, start: Started) -> None:
        backend = await start(limits=limits_of(2, 60.0))
        name = unique()
        await backend.publish(name, "a", msg_id="old")
        for i in range(2):
            await backend.publish(name, str(i))
        assert (await backend.publish(name, "a", msg_id="old")).offset == 4

    # Presence -------------------------------------------------------------------------------

    def presence_of(self, backend: Backend) -> base.PresenceStore:
        store = backend.presence_store
        if store is None:
            pytest.skip(f"{type(backend).__name__} declares no presence")
        return store

    async def test_presence_add_replace_remove(self, start: Started, harness: Harness) -> None:
        one, two = await self.pair(start, harness)
        p1, p2 = self.presence_of(one), self.presence_of(two)
        name = unique()
        assert await p1.presence(name) == {}
        await p1.presence_add(name, "c1", {"user": "alice"})
        await p2.presence_add(name, "c2", {"user": "bob"})
        await p2.presence_add(name, "c2", {"user": "bob", "n": 2})  # replaces
        assert await p1.presence(name) == {"c1": {"user": "alice"}, "c2": {"user": "bob", "n": 2}}
        await p1.presence_remove(name, "c2")
        await p1.presence_remove(name, "nobody")  # a no-op
        assert await p2.presence(name) == {"c1": {"user": "alice"}}

    async def test_shared_presence_expires_unless_refreshed(
        self, start: Started, harness: Harness
    ) -> None:
        if not harness.shared:
            pytest.skip("a presence store private to one process dies with it")
        backend = await start(presence_ttl=0.4)
        store = self.presence_of(backend)
        name = unique()
        await store.presence_add(name, "kept", {})
        await store.presence_add(name, "dropped", {})
        began = time.monotonic()
        while time.monotonic() - began < timeout(0.4) + 0.3:
            await store.presence_add(name, "kept", {})
            await asyncio.sleep(0.1)  # refreshing: more often than the TTL
        assert await store.presence(name) == {"kept": {}}

    # Failures -------------------------------------------------------------------------------

    async def test_every_call_fails_loudly_while_the_server_is_down(
        self, start: Started, harness: Harness
    ) -> None:
        backend = await start()
        name = unique()
        await backend.publish(name, "before")
        harness.outage()
        try:
            if harness.history_survives_outage:
                assert (await backend.history(name)).messages[0].payload == "before"
            calls = [
                backend.publish(name, "lost"),
                backend.ping(),
                backend.subscribe(unique()),
            ]
            if not harness.history_survives_outage:
                calls.append(backend.history(name))
            if (store := backend.presence_store) is not None:
                calls += [store.presence_add(name, "c", {}), store.presence(name)]
            for call in calls:
                with pytest.raises(BackendUnavailable):
                    await asyncio.wait_for(call, timeout(15))
        finally:
            harness.end_outage()
        message = await self._answer(backend.publish, name, "after")
        assert message.offset >= 1
        await self._answer(backend.ping)
