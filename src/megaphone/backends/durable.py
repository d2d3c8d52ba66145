"""Durable topics: a backend whose chosen topics are numbered and kept by another history store.

:class:`DurableTopics` wraps a :class:`~.base.Backend` and a :class:`~.base.HistoryStore`
(:class:`~.database.DatabaseHistory`, the Django database, by default) and is itself a
backend. For each topic it asks ``durable(topic)`` (by default :func:`durable_topic`: the
topic's options say ``durable: True``, see :func:`megaphone.conf.topic_options`):

* a durable topic's publish is appended to the store, which numbers it, and, when it is new (not
  a known ``msg_id``), fanned out through the wrapped backend's :meth:`~.base.Broker.forward`;
  its history is read from the store. The wrapped backend never numbers nor stores it.
* any other topic goes to the wrapped backend, unchanged.

So a durable topic has the guarantees of its store (offsets and epoch kept across restarts of
every process, in the database) and the fan-out of the wrapped backend (at most once: a
subscriber that missed a forwarded message fills the gap from the store's history). Fan-out,
presence and the cluster-wide topic count are the wrapped backend's. Its sweep runs the
wrapped backend's, then, when some topic may be durable, the store's.

The node always holds one (see :func:`megaphone.engine.node.start_node`): which topics are
durable is read per call, so settings that change at run time (tests) are followed.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import ParamSpec, TypeVar

from channels.db import database_sync_to_async
from django.db import DatabaseError

from megaphone.backends.base import (
    Appended,
    Backend,
    BackendUnavailable,
    ClusterTopics,
    HistoryLimits,
    HistoryPage,
    HistoryStore,
    MessageCallback,
    PresenceStore,
)
from megaphone.conf import get_config, topic_options
from megaphone.core.message import Message

#: Seconds between two rounds over durable topics' expired messages in the database (a round
#: deletes them a batch of topics per :meth:`DatabaseHistory.sweep`).
EXPIRE_INTERVAL = 10.0

P = ParamSpec("P")
T = TypeVar("T")


def durable_topic(topic: str) -> bool:
    """Whether the settings make ``topic`` durable (internal ``$`` topics never are)."""
    return not topic.startswith("$") and topic_options(topic).durable


def any_durable_topics() -> bool:
    """Whether some ``TOPICS`` entry of the settings makes topics durable."""
    return any(
        isinstance(options, dict) and options.get("durable") for _, options in get_config().TOPICS
    )


class DurableTopics:
    """``backend`` with the topics that ``durable(topic)`` chooses kept in ``store``; see the
    module docstring. ``any_durable()`` says whether the store needs sweeping at all."""

    def __init__(
        self,
        backend: Backend,
        store: HistoryStore,
        *,
        durable: Callable[[str], bool] = durable_topic,
        any_durable: Callable[[], bool] = any_durable_topics,
    ) -> None:
        self.inner = backend
        self.store = store
        self._durable = durable
        self._any_durable = any_durable
        self.url = backend.url
        self.pipelines_publishes = backend.pipelines_publishes
        self.crosses_processes = backend.crosses_processes

    @classmethod
    def in_database(cls, backend: Backend, limits: HistoryLimits) -> DurableTopics:
        """``backend`` with the settings' durable topics in the Django database."""
        return cls(backend, DatabaseHistory(limits))

    @property
    def name(self) -> str:
        return self.inner.name

    @property
    def presence_store(self) -> PresenceStore | None:
        return self.inner.presence_store

    @property
    def cluster_topics(self) -> ClusterTopics | None:
        return self.inner.cluster_topics

    def history_limits(self, topic: str) -> tuple[int, float]:
        if self._durable(topic):
            return self.store.history_limits(topic)
        return self.inner.history_limits(topic)

    async def publish(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Message:
        if not self._durable(topic):
            return await self.inner.publish(topic, payload, json=json, msg_id=msg_id)
        message, new = await self.store.append(topic, payload, json=json, msg_id=msg_id)
        if new:
            await self.inner.forward(message)
        return message

    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        if self._durable(topic):
            return await self.store.history(topic, since, limit)
        return await self.inner.history(topic, since, limit)

    async def sweep(self) -> bool:
        if await self.inner.sweep():
            return True
        return self._any_durable() and await self.store.sweep()

    # The broker: the wrapped backend's.

    async def start(self, on_message: MessageCallback) -> None:
        await self.inner.start(on_message)

    async def stop(self) -> None:
        await self.inner.stop()

    async def subscribe(self, topic: str) -> None:
        await self.inner.subscribe(topic)

    async def unsubscribe(self, topic: str) -> None:
        await self.inner.unsubscribe(topic)

    async def forward(self, message: Message) -> None:
        await self.inner.forward(message)

    async def ping(self) -> None:
        await self.inner.ping()


class DatabaseHistory:
    """A :class:`~.base.HistoryStore` in the Django database (see :mod:`~.database`), with
    each topic's limits from ``limits(topic) -> (size, ttl)``."""

    def __init__(self, limits: HistoryLimits) -> None:
        self._limits = limits
        self._cursor = ""  # where the current round of expiry goes on ("": a new round)
        self._next_round = time.monotonic() + EXPIRE_INTERVAL

    def history_limits(self, topic: str) -> tuple[int, float]:
        return self._limits(topic)

    @staticmethod
    async def _run(what: str, function: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """``function`` in Django's database thread; a DatabaseError as BackendUnavailable."""
        call: Callable[P, Awaitable[T]] = database_sync_to_async(function)
        try:
            return await call(*args, **kwargs)
        except DatabaseError as exc:
            raise BackendUnavailable(f"{what}: {exc}") from exc

    async def append(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Appended:
        from megaphone.backends import database  # imports the models: once Django is set up

        size, ttl = self._limits(topic)
        message, new = await self._run(
            f"durable topic {topic}",
            database.append,
            topic,
            payload,
            json=json,
            msg_id=msg_id,
            size=size,
            ttl=ttl,
        )
        return Appended(message, new)

    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        from megaphone.backends import database

        size, ttl = self._limits(topic)
        return await self._run(
            f"durable topic {topic}", database.history, topic, since, limit, size=size, ttl=ttl
        )

    async def sweep(self) -> bool:
        """Every :data:`EXPIRE_INTERVAL` seconds, a round over the durable topics: one
        :func:`~.database.expire` batch per call (one a second from the node's sweeper) until
        every topic was seen. Always False: the rest of a round waits for the next call."""
        if time.monotonic() < self._next_round:
            return False
        from megaphone.backends import database

        self._cursor = await self._run(
            "durable topics", database.expire, self._cursor, self._limits
        )
        pause = 0.0 if self._cursor else EXPIRE_INTERVAL
        self._next_round = time.monotonic() + pause
        return False
