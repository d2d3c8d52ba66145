"""Tier 3: two machines sharing one Redis (or one Redis Cluster), and one of them cut off
mid-stream.

Each machine is a Linux network namespace with an address of its own (tests/netns.py) running
``manage.py serve --workers 2``; the private Redis they share (or the private cluster: 3
masters with a replica each) listens on the host's end of the bridge. Clients in the test (the
host) connect with :mod:`megaphone.client`, each given both machines' URLs, its own machine's
first:

* before the cut, every client of both machines gets every message of every topic once, in
  order, whichever machine it was published on (so through Redis);
* then one machine's cable is pulled while both sides keep publishing: its clients find their
  connections dead by their pings, reconnect to the other machine and recover every message they
  missed (``recovered: true``, never a silent gap); its publisher's unanswered publish is sent
  again there with its ``msg_id`` and published once. In the end every client has every message
  of every topic once, in order, and each publish has an offset of its own with none missing.

It needs root (or CAP_NET_ADMIN): without, it skips and says why.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from megaphone.client import Client, Message, Position, SubscribeResult
from tests import netns
from tests.conftest import ServerProcess, start_server, timeout
from tests.redis_server import REDIS_SERVER, ClusterSetup, RedisServer

from .test_redis_scaleout import REDIS_SETTINGS_ENV, unique

TOPICS = 3
LISTENERS = 3  # per machine
BEFORE_CUT = 30  # messages each publisher publishes before the cut
DURING_CUT = 900  # at most, each, while the cut machine's clients move (history keeps 1000)
RATE = 20  # messages a second each publisher publishes meanwhile
AFTER_MOVE = 20  # each, once they all moved


@pytest.fixture
def network() -> Iterator[netns.Network]:
    """Two machines on a bridge of this host, removed at the end whatever happened."""
    reason = netns.unavailable()
    if reason is not None:
        pytest.skip(reason)
    network = netns.Network.create(2)
    yield network
    network.close()


@pytest.fixture(params=["redis", "cluster"])
def machines(
    network: netns.Network, tmp_path: Path, request: pytest.FixtureRequest
) -> Iterator[list[ServerProcess]]:
    """``manage.py serve --workers 2`` on each machine, over one private Redis (or Redis
    Cluster) on the bridge; all killed at the end (before the network goes)."""
    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    servers: list[ServerProcess] = []
    redis: RedisServer | ClusterSetup | None = None
    try:
        if request.param == "cluster":
            redis = ClusterSetup(tmp_path, host=network.host_address)
        else:
            redis = RedisServer(tmp_path, host=network.host_address)
            redis.start()
        env = {
            **REDIS_SETTINGS_ENV,
            "MEGAPHONE_BACKEND": redis.url,
            "DJANGO_ALLOWED_HOSTS": ",".join(m.address for m in network.machines),
        }
        for machine in network.machines:
            servers.append(
                start_server(
                    tmp_path, workers=2, env=env, host=machine.address, wrap=machine.command
                )
            )
        yield servers
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)
        if redis is not None:
            redis.stop()


def connect_url(server: ServerProcess) -> str:
    return f"{server.ws_url}/ws/connect/"


def client(urls: Sequence[str], changed: asyncio.Event, **options: Any) -> Client:
    """A client of ``urls`` that finds a dead path within seconds and comes back quickly;
    ``changed`` is set on each change of its state."""
    return Client(
        urls,
        on_state=lambda state, code: changed.set(),
        min_delay=0.05,
        max_delay=0.5,
        ping_interval=0.5,
        ping_timeout=timeout(2),
        close_timeout=timeout(1),
        open_timeout=timeout(3),
        **options,
    )


class Listener:
    """A client subscribed to every topic, recording what it gets; ``changed`` is set on each
    message and each subscribe answer."""

    def __init__(self, urls: Sequence[str], topics: list[str], changed: asyncio.Event) -> None:
        self.client = client(urls, changed)
        self.topics = topics
        self.changed = changed
        self.received: dict[str, list[Message]] = {topic: [] for topic in topics}
        self.answers: list[SubscribeResult] = []
        self.failed: list[SubscribeResult] = []

    async def start(self) -> None:
        await self.client.connect()
        for topic in self.topics:
            await self.client.subscribe(
                topic,
                on_message=self._message,
                on_subscribed=self._answer,
                on_recovery_failed=self.failed.append,
            )

    def _message(self, message: Message) -> None:
        self.received[message.topic].append(message)
        self.changed.set()

    def _answer(self, result: SubscribeResult) -> None:
        self.answers.append(result)
        self.changed.set()

    def recovered_every_topic(self) -> bool:
        """Whether every topic was subscribed again with ``since``, and recovered."""
        recovered = {a.topic for a in self.answers if a.recovered}
        return recovered == set(self.topics)

    def has(self, published: dict[str, list[tuple[int, Any]]]) -> bool:
        return all(len(self.received[t]) >= len(published[t]) for t in self.topics)


class Publisher:
    """A client publishing ``{"from": name, "seq": n}`` on the topics in turn, one at a time."""

    def __init__(
        self, name: str, urls: Sequence[str], topics: list[str], changed: asyncio.Event
    ) -> None:
        self.name = name
        self.client = client(urls, changed, publish_timeout=timeout(60))
        self.topics = topics
        self.changed = changed
        self.published: list[tuple[Position, dict[str, Any]]] = []

    async def publish(
        self, count: int, stop: asyncio.Event | None = None, rate: float | None = None
    ) -> None:
        """Publish ``count`` messages, or fewer if ``stop`` is set first; with ``rate``, a
        steady stream of at most ``rate`` a second (the workload's shape, not a wait for
        something to happen: a publish still waits for its answer)."""
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        for _ in range(count):
            if stop is not None and stop.is_set():
                return
            if rate is not None:
                await asyncio.sleep(max(0.0, next_at - loop.time()))
                next_at += 1 / rate
            seq = len(self.published)
            data = {"from": self.name, "seq": seq}
            position = await self.client.publish(self.topics[seq % len(self.topics)], data)
            self.published.append((position, data))
            self.changed.set()


async def until(
    changed: asyncio.Event, done: Callable[[], bool], seconds: float, what: str
) -> None:
    """Wait until ``done()``, checked whenever ``changed`` is set, at most ``seconds``."""
    try:
        async with asyncio.timeout(timeout(seconds)):
            while True:
                changed.clear()
                if done():
                    return
                await changed.wait()
    except TimeoutError:
        raise AssertionError(f"{what} within {timeout(seconds):.0f} s") from None


def every_message(
    publishers: list[Publisher], topics: list[str]
) -> dict[str, list[tuple[int, Any]]]:
    """Each topic's published messages, ``(offset, data)`` in offset order."""
    published: dict[str, list[tuple[int, Any]]] = {topic: [] for topic in topics}
    for publisher in publishers:
        for position, data in publisher.published:
            published[position.topic].append((position.offset, data))
    return {topic: sorted(messages) for topic, messages in published.items()}


async def publish_to_all(
    publishers: list[Publisher], count: int, listeners: list[Listener], when: str
) -> dict[str, list[tuple[int, Any]]]:
    """Each publisher publishes ``count`` more; wait until every listener has every message
    published so far; return them (:func:`every_message`)."""
    await asyncio.gather(*(p.publish(count) for p in publishers))
    published = every_message(publishers, publishers[0].topics)
    await until(
        publishers[0].changed,
        lambda: all(listener.has(published) for listener in listeners),
        60,
        f"the messages published {when} the cut did not all arrive",
    )
    return published


@pytest.mark.timeout(int(timeout(240)))
async def test_clients_of_a_machine_cut_off_move_to_the_other_and_miss_nothing(
    network: netns.Network, machines: list[ServerProcess]
) -> None:
    topics = [unique(f"machines.{n}") for n in range(TOPICS)]
    urls = [connect_url(server) for server in machines]
    changed = asyncio.Event()
    near, far = urls, urls[::-1]  # machine 0's clients try it first, machine 1's the other
    listeners = {
        side: [Listener(order, topics, changed) for _ in range(LISTENERS)]
        for side, order in ((0, near), (1, far))
    }
    publishers = [Publisher("zero", near, topics, changed), Publisher("one", far, topics, changed)]
    everyone = [*listeners[0], *listeners[1]]
    clients = [*(listener.client for listener in everyone), *(p.client for p in publishers)]
    try:
        await asyncio.gather(*(listener.start() for listener in everyone))
        await asyncio.gather(*(p.client.connect() for p in publishers))
        for side in (0, 1):
            assert {listener.client.server_url for listener in listeners[side]} == {urls[side]}

        # Both machines publish; everyone gets everything, live.
        await publish_to_all(publishers, BEFORE_CUT, everyone, "before the cut")

        # Machine 0's cable is pulled while both sides keep publishing.
        stop = asyncio.Event()
        publishing = [asyncio.create_task(p.publish(DURING_CUT, stop, RATE)) for p in publishers]
        await until(
            changed,
            lambda: all(len(p.published) >= BEFORE_CUT + RATE for p in publishers),
            60,
            "the publishers did not go on",
        )
        network.cut(network.machines[0])
        cut_at = time.monotonic()
        await until(
            changed,
            lambda: all(
                listener.client.server_url == urls[1]
                and listener.client.state == "open"
                and listener.recovered_every_topic()
                for listener in listeners[0]
            ),
            90,
            "machine 0's clients did not all move to machine 1 and recover",
        )
        moved_in = time.monotonic() - cut_at
        during = [len(p.published) - BEFORE_CUT for p in publishers]
        stop.set()
        await asyncio.wait_for(asyncio.gather(*publishing), timeout(90))
        assert publishers[0].client.server_url == urls[1]

        # Both publishers go on from machine 1; everyone gets everything.
        published = await publish_to_all(publishers, AFTER_MOVE, everyone, "during and after")
    finally:
        await asyncio.gather(*(c.close() for c in clients))

    print(f"machine 0's clients moved and recovered {moved_in:.2f} s after the cut;")
    print(f"meanwhile machine 0's publisher published {during[0]}, machine 1's {during[1]}")
    for topic, messages in published.items():
        offsets = [offset for offset, _ in messages]  # each publish once: no hole, no double
        assert offsets == list(range(offsets[0], offsets[0] + len(offsets))), topic
    for listener in everyone:
        assert listener.failed == []
        for topic in topics:
            got = [(m.offset, m.data) for m in listener.received[topic]]
            assert got == published[topic], (listener.client.server_url, topic)
            assert len({m.epoch for m in listener.received[topic]}) == 1
    assert during[1] > RATE + moved_in * RATE / 2  # machine 1 published all along the cut
