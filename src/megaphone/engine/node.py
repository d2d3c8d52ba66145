"""The node: this process's engine on one event loop, joining the backend to the hub.

Data flows one way: ``publish`` -> backend (orders, stores, fans out across processes) -> the
node's callback -> hub -> each subscriber's outbox -> its socket. The node also keeps the backend
subscribed to exactly the topics that have local subscribers.

There is one node per running event loop (an ASGI server has one per worker process), created on
first use by :func:`get_node` from the settings.

A started node runs a *sweeper* task: about every :data:`SWEEP_INTERVAL` seconds it calls
:meth:`Backend.sweep` (expired history dropped, unused topics released, shared keys of subscribed
topics kept alive, durable topics' expired messages deleted), in bounded rounds that yield to the
loop between them.

A connection's handshake asks :meth:`Node.reachable`, not the backend: a reconnect storm of
thousands of clients costs one ping a :data:`REACHABLE_FRESH` window, never one each.

A node serving clients raises the first threshold of Python's cyclic garbage collector to
``GC_THRESHOLD`` (:func:`raise_gc_threshold`): with Python's own, the objects of publishes in
flight across a backend round trip are promoted to the oldest generation, and every time a
quarter of the heap has been promoted Python walks all of it, thousands of connections included
(half a second at 10,000 connections, several times a second under load over Redis).

The node built from the settings (:func:`start_node`) holds the settings' backend wrapped in
:class:`~megaphone.backends.durable.DurableTopics`, which keeps durable topics in the Django
database: the node itself treats every topic alike.
"""

from __future__ import annotations

import asyncio
import gc
import time
import weakref
from dataclasses import dataclass

from megaphone.backends import Backend, BackendUnavailable, backend_from_url
from megaphone.backends.base import HistoryPage, PresenceStore
from megaphone.backends.durable import DurableTopics
from megaphone.conf import get_config, topic_options
from megaphone.core import metrics
from megaphone.core.decoding import check_text
from megaphone.core.hub import Hub, Subscriber
from megaphone.core.logs import get_logger
from megaphone.core.message import Message
from megaphone.core.topics import is_internal
from megaphone.engine.joinleave import JoinLeave
from megaphone.engine.occupancy import LEDGER_HISTORY, LEDGER_PREFIX, Occupancy
from megaphone.engine.stats import STATS_HISTORY, STATS_TOPIC, publish_stats


@dataclass(slots=True)
class Traffic:
    """The application's messages this worker counted since it started, internal topics
    (:func:`~megaphone.core.topics.is_internal`) left out: what the dashboard's rates are made
    of."""

    #: Messages published through this worker (its clients, its HTTP API, its ``publish()``).
    published: int = 0
    #: Messages handed to this worker's subscribers: one per subscriber.
    delivered: int = 0


logger = get_logger(__name__)

#: Seconds between two sweeps of the backend (see the module docstring).
SWEEP_INTERVAL = 1.0

#: Seconds a backend's answer to a ping stands for :meth:`Node.reachable`.
REACHABLE_FRESH = 1.0


class Node:
    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.hub = Hub()
        self.traffic = Traffic()
        self._subscribed: dict[str, asyncio.Future[None]] = {}
        # (topic, client) -> info of this process's presence entries, re-added periodically so
        # that a shared backend can expire the entries of a dead process.
        self._presence: dict[tuple[str, str], dict[str, object]] = {}
        self._presence_refresher: asyncio.Task[None] | None = None
        self._stats_publisher: asyncio.Task[None] | None = None
        self._sweeper: asyncio.Task[None] | None = None
        self._relay: asyncio.Task[None] | None = None
        self._answered_at = -REACHABLE_FRESH  # monotonic time of the last ping answered
        self._ping: asyncio.Future[None] | None = None  # the ping in flight
        #: This process's clients' join/leave events, coalesced per topic.
        self.join_leave = JoinLeave(self._publish_json)
        #: This process's part in topic occupancy (occupied/vacated, once across workers).
        self.occupancy = Occupancy(self)
        metrics.track_hub(self.hub)

    async def start(self) -> None:
        await self.backend.start(self._on_message)
        self._sweeper = asyncio.ensure_future(self._sweep_forever())

    async def _sweep_forever(self) -> None:
        """The sweeper (see the module docstring). A failing round is logged and retried on
        the next tick: the task never dies while the node runs."""
        while True:
            more = False
            try:
                more = await self.backend.sweep()
            except BackendUnavailable as exc:  # the backend's own errors say it loudly
                metrics.BACKEND_ERRORS.labels("sweep").inc()
                logger.debug("sweep failed: %s", exc)
            except Exception:
                logger.exception("sweep failed")
            await asyncio.sleep(0 if more else SWEEP_INTERVAL)

    def _on_message(self, message: Message) -> None:
        """The backend's callback: hand ``message`` to the hub, and count it."""
        delivered = self.hub.broadcast(message)
        metrics.DELIVERIES.inc(delivered)
        if not is_internal(message.topic):
            self.traffic.delivered += delivered
        metrics.PUBLISH_TO_SEND.observe(max(0.0, time.time() - message.time))

    def publish_stats(self, interval: float) -> None:
        """Publish this worker's figures for the dashboard every ``interval`` seconds."""
        self._stats_publisher = asyncio.ensure_future(publish_stats(self, interval))

    def relay_transactions(self, interval: float) -> None:
        """Relay the committed messages of the transactional outbox that their process did not
        (see :mod:`megaphone.engine.relay`) every ``interval`` seconds."""
        from megaphone.engine.relay import relay_forever

        self._relay = asyncio.ensure_future(relay_forever(self, interval))

    async def stop(self) -> None:
        tasks = (self._presence_refresher, self._stats_publisher, self._sweeper, self._relay)
        for task in tasks:
            if task is not None:
                task.cancel()
        self.join_leave.stop()
        self.occupancy.stop()
        await self.backend.stop()

    async def reachable(self) -> None:
        """Raise :class:`~megaphone.backends.BackendUnavailable` unless the backend answered a
        ping within the last :data:`REACHABLE_FRESH` seconds. Concurrent callers share one ping
        (its failure is everyone's, and never remembered: the next call pings again)."""
        if time.monotonic() - self._answered_at < REACHABLE_FRESH:
            return
        if self._ping is None:
            self._ping = asyncio.ensure_future(self._ping_once())
        await asyncio.shield(self._ping)

    async def _ping_once(self) -> None:
        try:
            await self.backend.ping()
            self._answered_at = time.monotonic()
        finally:
            self._ping = None

    async def subscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Add ``subscriber`` to ``topic``; return once the backend delivers that topic here.

        Raises :class:`~megaphone.backends.BackendUnavailable` (and leaves the topic) if the
        backend cannot subscribe.
        """
        if self.hub.add(topic, subscriber):
            self._subscribed[topic] = asyncio.ensure_future(self.backend.subscribe(topic))
            self.occupancy.changed(topic, True)
        try:
            await asyncio.shield(self._subscribed[topic])
        except BaseException:
            await self.unsubscribe(topic, subscriber)
            raise

    async def unsubscribe(self, topic: str, subscriber: Subscriber) -> None:
        """Remove ``subscriber`` from ``topic``; the backend stops when the last one leaves."""
        if self.hub.remove(topic, subscriber):
            self._subscribed.pop(topic, None)
            self.occupancy.changed(topic, False)
            await self.backend.unsubscribe(topic)

    async def publish(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Message:
        """Publish through the backend; return the message with its offset and epoch.

        With ``msg_id``, a message already accepted with that id is returned instead (see
        :meth:`Backend.publish`).

        The last gate of the decoding boundary (:mod:`megaphone.core.decoding`): text ``payload`` or
        a ``msg_id`` that is not valid Unicode raises :class:`~megaphone.core.decoding.InvalidText`
        here, before the backend, the history or any subscriber sees it, whatever path it came
        by. (Every entry point refuses it earlier with its own documented error.)
        """
        if isinstance(payload, str):
            check_text(payload, "the payload")
        if msg_id is not None:
            check_text(msg_id, "msg_id")
        try:
            message = await self.backend.publish(topic, payload, json=json, msg_id=msg_id)
        except BackendUnavailable:
            metrics.BACKEND_ERRORS.labels("publish").inc()
            raise
        metrics.MESSAGES_PUBLISHED.inc()
        if not is_internal(topic):
            self.traffic.published += 1
        return message

    async def _publish_json(self, topic: str, text: str) -> Message:
        return await self.publish(topic, text, json=True)

    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        """``topic``'s messages after offset ``since`` (see :meth:`Backend.history`)."""
        return await self.backend.history(topic, since, limit)

    def _presence_store(self) -> PresenceStore:
        """The backend's presence; :class:`BackendUnavailable` if it declares none."""
        store = self.backend.presence_store
        if store is None:
            raise BackendUnavailable(f"{self.backend.name} does not keep presence")
        return store

    async def presence_add(self, topic: str, client: str, info: dict[str, object]) -> None:
        """Record ``client`` on ``topic``, and keep refreshing it until removed."""
        self._presence[topic, client] = info
        await self._presence_store().presence_add(topic, client, info)
        if self._presence_refresher is None or self._presence_refresher.done():
            self._presence_refresher = asyncio.ensure_future(self._refresh_presence())

    async def presence_remove(self, topic: str, client: str) -> None:
        self._presence.pop((topic, client), None)
        await self._presence_store().presence_remove(topic, client)

    async def presence(self, topic: str) -> dict[str, dict[str, object]]:
        return await self._presence_store().presence(topic)

    async def _refresh_presence(self) -> None:
        """Re-add this process's entries three times per ``presence_ttl``, while there are any."""
        while self._presence:
            store = self._presence_store()
            await asyncio.sleep(store.presence_ttl / 3)
            for (topic, client), info in list(self._presence.items()):
                try:
                    await store.presence_add(topic, client, info)
                except BackendUnavailable:
                    metrics.BACKEND_ERRORS.labels("presence").inc()
                    break


def history_limits(topic: str) -> tuple[int, float]:
    """``(size, ttl)`` of ``topic``'s history, from the settings. Internal topics (join/leave
    events, whose names start with ``$``) keep no history; the dashboard's figures keep theirs
    (:data:`megaphone.engine.stats.STATS_HISTORY`), whatever the settings say."""
    if topic.startswith("$"):
        return 0, 0.0
    if topic == STATS_TOPIC:
        return STATS_HISTORY
    if topic.startswith(LEDGER_PREFIX):
        return LEDGER_HISTORY
    options = topic_options(topic)
    return options.history_size, options.history_ttl


def raise_gc_threshold(threshold: int) -> None:
    """Raise the first threshold of Python's garbage collector to ``threshold`` if it is lower
    (never lower it: a process may have tuned it already); 0 leaves it."""
    first, *others = gc.get_threshold()
    if threshold > first:
        gc.set_threshold(threshold, *others)


_nodes: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[Node]] = (
    weakref.WeakKeyDictionary()
)


async def start_node(*, dashboard: bool = True) -> Node:
    """A started node of the settings' backend; the caller owns it. With ``dashboard`` (and
    ``DASHBOARD_INTERVAL``), it publishes this worker's figures for the dashboard, and (with
    ``TRANSACTION_RELAY_INTERVAL``) relays the transactional outbox: a worker serving clients
    does, a process part that serves none (the background publisher, ``manage.py megaphone``)
    does not. A worker serving clients also gets ``GC_THRESHOLD`` (see the module docstring)."""
    config = get_config()
    if dashboard:
        raise_gc_threshold(config.GC_THRESHOLD)
    backend = backend_from_url(
        config.BACKEND,
        history_size=config.HISTORY_SIZE,
        history_ttl=config.HISTORY_TTL,
        limits=history_limits,
        presence_ttl=config.PRESENCE_TTL,
        history_max_bytes=config.HISTORY_MAX_BYTES,
    )
    node = Node(DurableTopics.in_database(backend, history_limits))
    await node.start()
    if dashboard and config.DASHBOARD_INTERVAL:
        node.publish_stats(config.DASHBOARD_INTERVAL)
    if dashboard and config.TRANSACTION_RELAY_INTERVAL:
        node.relay_transactions(config.TRANSACTION_RELAY_INTERVAL)
    return node


async def get_node() -> Node:
    """The started node of the running event loop (created on first call)."""
    loop = asyncio.get_running_loop()
    starting = _nodes.get(loop)
    if starting is None or (starting.done() and (starting.cancelled() or starting.exception())):
        starting = _nodes[loop] = loop.create_task(start_node())
    return await asyncio.shield(starting)


async def forget_node() -> None:
    """Stop the running loop's node, if any, and forget it: the next :func:`get_node` starts a
    new one from the settings of the moment (``megaphone.testing`` isolates tests with it)."""
    starting = _nodes.pop(asyncio.get_running_loop(), None)
    if starting is None:
        return
    if not starting.done():
        starting.cancel()
        await asyncio.wait({starting})
    if not starting.cancelled() and starting.exception() is None:
        await starting.result().stop()
