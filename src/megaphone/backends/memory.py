"""The in-memory backend: one process, no dependencies, the default.

All :class:`MemoryBackend` instances of a process share one store, so a message published from
any event loop or thread of the process (a view run in a thread, a test's loop) reaches every
started backend of that process, each on its own loop, in offset order. Nothing crosses process
boundaries: run one worker process with this backend (a system check enforces it), or use Redis.

History lives in the process: it is bounded by ``history_size`` messages per topic, by
``history_ttl`` seconds, and by ``history_max_bytes`` over all topics together, and is lost when
the process exits, which gives every topic a new epoch.

What the store keeps, and for how long (nothing grows with topics that nobody uses):

* A topic's state (epoch, offset, history, ``msg_id`` index, presence) lives while the topic
  has a subscribed backend, a presence entry or a message in history, and
  :func:`~.base.epoch_ttl` more (its history TTL, at least a few seconds, from its last publish
  or its last subscriber leaving: a client that lost its connection resumes in its epoch, as on
  Redis). Then it is released: its next use starts a new epoch at offset 0, which recovery
  reports as ``recovered: false``. A read of a topic without state creates nothing.
* Expiry happens in the background, in :meth:`MemoryBackend.sweep` (the node calls it about
  every second), not on the topic's next use: the store keeps the topics with history in a heap
  ordered by when their oldest message expires, and the unused ones in a heap ordered by when
  they are to be released, so a sweep touches only the topics with something due, and does at
  most :data:`SWEEP_BATCH` topics and messages of work per call.
* Over ``history_max_bytes`` (each message counted as its payload's size plus
  :data:`MESSAGE_OVERHEAD`), messages are evicted in the order they would expire, whatever their
  topic (the oldest first when topics share one TTL), until the total is under the bound again.
  A topic that lost messages this way says so as trimming does: a history read across the gap
  answers ``complete: False``, so recovery answers ``recovered: false``.
"""

from __future__ import annotations

import asyncio
import heapq
import secrets
import sys
import threading
import time
from collections import deque
from typing import Any

from megaphone.backends.base import (
    BaseBackend,
    HistoryPage,
    MessageCallback,
    PresenceStore,
    epoch_ttl,
)
from megaphone.core import metrics
from megaphone.core.message import Message

#: Bytes a message costs in history besides its payload (the message object, its slot in the
#: topic's deque, its time and offset), as counted against ``history_max_bytes``.
MESSAGE_OVERHEAD = 200
#: Most work one :meth:`MemoryBackend.sweep` call does, in topics visited plus messages dropped,
#: so that a sweep never holds the loop (and the store's lock) for long.
SWEEP_BATCH = 5000


def _cost(message: Message) -> int:
    return sys.getsizeof(message.payload) + MESSAGE_OVERHEAD


#: The history of every topic that has none: a deque costs 760 bytes even when empty, and most
#: topics (subscribed, never published to) have no history. Never appended to (see append).
_NO_HISTORY: deque[Message] = deque(maxlen=0)


class _Topic:
    """One topic's state. ``ttl`` is how long its history is kept, ``keep`` how long the topic
    is once unused (from ``touched``: its last publish, or when it last became unused);
    ``subscribers`` is how many started backends subscribed to it."""

    __slots__ = (
        "epoch",
        "history",
        "keep",
        "msg_ids",
        "offset",
        "presence",
        "subscribers",
        "touched",
        "ttl",
    )

    def __init__(self, ttl: float, keep: float, now: float) -> None:
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        self.history = _NO_HISTORY
        # msg_id -> message, oldest first; pruned with the history it points into.
        self.msg_ids: dict[str, Message] = {}
        self.presence: dict[str, dict[str, object]] = {}
        self.subscribers = 0
        self.ttl = ttl
        self.keep = keep
        self.touched = now

    def unused(self) -> bool:
        return not (self.history or self.presence or self.subscribers)

    def expires(self) -> float:
        """When its oldest message expires (history must not be empty)."""
        return self.history[0].time + self.ttl

    def trim(self, size: int, now: float) -> int:
        """Drop messages beyond ``size`` and those expired at ``now``; return their cost."""
        history, freed = self.history, 0
        while len(history) > size:
            freed += _cost(history.popleft())
        deadline = now - self.ttl
        while history and history[0].time < deadline:
            freed += _cost(history.popleft())
        if freed:
            self.forget_trimmed_ids()
        return freed

    def drop_oldest(self) -> int:
        """Evict the oldest message in history; return its cost."""
        freed = _cost(self.history.popleft())
        self.forget_trimmed_ids()
        return freed

    def forget_trimmed_ids(self) -> None:
        if not self.history:
            self.history = _NO_HISTORY
        if self.msg_ids:
            oldest = self.history[0].offset if self.history else self.offset + 1
            for msg_id, message in list(self.msg_ids.items()):
                if message.offset >= oldest:
                    break
                del self.msg_ids[msg_id]


class _Deadlines:
    """Topic names in the order of a deadline, each at most once: a heap of ``(deadline,
    name)`` and the set of names in it. A deadline may be early, never late: whoever pops a
    name checks whether its topic is really due, and adds it again if not."""

    __slots__ = ("heap", "names")

    def __init__(self) -> None:
        self.heap: list[tuple[float, str]] = []
        self.names: set[str] = set()

    def add(self, name: str, deadline: float) -> None:
        if name not in self.names:
            self.names.add(name)
            heapq.heappush(self.heap, (deadline, name))

    def pop(self, now: float) -> tuple[float, str] | None:
        """The first entry, if its deadline is no later than ``now``."""
        if not self.heap or self.heap[0][0] > now:
            return None
        entry = heapq.heappop(self.heap)
        self.names.discard(entry[1])
        return entry

    def due(self, now: float) -> bool:
        return bool(self.heap) and self.heap[0][0] <= now


class _Listener:
    """One started backend: hands messages to its callback on its own loop, in order.

    Called with the store's lock held, so pushes are serialised. A push made on the listener's
    own loop with nothing pending is delivered at once; any other push is queued and drained on
    the listener's loop, behind whatever was queued before it.
    """

    __slots__ = ("callback", "loop", "pending", "scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop, callback: MessageCallback) -> None:
        self.loop = loop
        self.callback = callback
        self.pending: deque[Message] = deque()
        self.scheduled = False

    def push(self, message: Message, current_loop: asyncio.AbstractEventLoop | None) -> bool:
        """Deliver or queue ``message``; return False if this listener's loop is gone."""
        if current_loop is self.loop and not self.scheduled:
            self.callback(message)
            return True
        self.pending.append(message)
        if not self.scheduled:
            try:
                self.loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: this listener is dead
                return False
            self.scheduled = True
        return True

    def _drain(self) -> None:
        with _store.lock:
            messages = list(self.pending)
            self.pending.clear()
            self.scheduled = False
        for message in messages:
            self.callback(message)


class _Store:
    """Every topic of the process. Callers hold :attr:`lock` around every method."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.topics: dict[str, _Topic] = {}
        self.listeners: list[_Listener] = []
        #: Topics with history, by when their oldest message expires.
        self.expiring = _Deadlines()
        #: Unused topics without history, by when they are released.
        self.idle = _Deadlines()
        #: Cost of every message in history (see :func:`_cost`).
        self.history_bytes = 0

    def topic(self, name: str, ttl: float, keep: float, now: float) -> _Topic:
        """``name``'s state (created: new epoch, offset 0), its history kept ``ttl`` seconds,
        itself ``keep`` seconds once unused."""
        state = self.topics.get(name)
        if state is None:
            state = self.topics[name] = _Topic(ttl, keep, now)
        state.ttl, state.keep = ttl, keep
        return state

    def settle(self, name: str, state: _Topic, now: float) -> None:
        """Called after anything that may have changed what is due for ``state``: release it
        if it is unused and its time is up, else make sure the sweeper will see it."""
        if state.history:
            self.expiring.add(name, state.expires())
        elif state.unused():
            release = state.touched + state.keep
            if release > now:
                self.idle.add(name, release)
            elif self.topics.get(name) is state:
                del self.topics[name]

    def leave(self, name: str, state: _Topic, now: float) -> None:
        """A subscriber or presence entry left: if unused, the topic is kept ``keep`` from now."""
        if state.unused():
            state.touched = now
        self.settle(name, state, now)

    def append(self, state: _Topic, message: Message) -> None:
        if state.history is _NO_HISTORY:
            state.history = deque()
        state.history.append(message)
        state.touched = message.time
        self.history_bytes += _cost(message)

    def trim(self, state: _Topic, size: int, now: float) -> None:
        self.history_bytes -= state.trim(size, now)

    def sweep(self, now: float, limit: int) -> bool:
        """Drop the history expired at ``now`` and release the unused topics whose time is up,
        visiting topics and dropping messages ``limit`` times at most (a topic's expired
        messages are dropped together); return True if more is due."""
        while limit > 0:
            entry = self.expiring.pop(now) or self.idle.pop(now)
            if entry is None:
                return False
            name = entry[1]
            state = self.topics.get(name)
            limit -= 1
            if state is not None:
                kept = len(state.history)
                self.trim(state, kept, now)
                limit -= kept - len(state.history)
                self.settle(name, state, now)
        return self.expiring.due(now) or self.idle.due(now)

    def evict(self, max_bytes: int, now: float) -> int:
        """Evict messages, the first to expire first, until history costs at most
        ``max_bytes``; return how many."""
        evicted = 0
        while self.history_bytes > max_bytes:
            entry = self.expiring.pop(float("inf"))
            if entry is None:
                break
            deadline, name = entry
            state = self.topics.get(name)
            if state is None or not state.history:
                continue
            if state.expires() == deadline:
                self.history_bytes -= state.drop_oldest()
                evicted += 1
            self.settle(name, state, now)  # not evicted: its entry was early, now it is exact
        return evicted


_store = _Store()


class MemoryBackend(BaseBackend):
    """Single-process backend; see the module docstring. Its own :class:`~.base.PresenceStore`
    (entries live until removed: they die with the process)."""

    crosses_processes = False
    _listener: _Listener | None = None

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        # Topics this instance subscribed to: each counts once in its topic's ``subscribers``.
        self._subscribed: set[str] = set()

    @property
    def presence_store(self) -> PresenceStore | None:
        return self

    def _state(self, topic: str, now: float) -> _Topic:
        """``topic``'s state, created if new."""
        size, ttl = self.history_limits(topic)
        return _store.topic(topic, ttl, epoch_ttl(size, ttl), now)

    async def start(self, on_message: MessageCallback) -> None:
        self._listener = _Listener(asyncio.get_running_loop(), on_message)
        with _store.lock:
            _store.listeners.append(self._listener)

    async def stop(self) -> None:
        now = time.time()
        with _store.lock:
            if self._listener in _store.listeners:
                _store.listeners.remove(self._listener)
            for topic in self._subscribed:
                self._leave(topic, now)
        self._subscribed.clear()
        self._listener = None

    async def subscribe(self, topic: str) -> None:
        """Keep ``topic``'s state (its epoch above all) while subscribed: a process-local
        store already sees every message."""
        if topic in self._subscribed:
            return
        self._subscribed.add(topic)
        with _store.lock:
            self._state(topic, time.time()).subscribers += 1

    async def unsubscribe(self, topic: str) -> None:
        """The topic's state is released in time if nothing else holds it (see the module
        docstring)."""
        if topic not in self._subscribed:
            return
        self._subscribed.discard(topic)
        with _store.lock:
            self._leave(topic, time.time())

    @staticmethod
    def _leave(topic: str, now: float) -> None:
        state = _store.topics.get(topic)
        if state is not None:
            state.subscribers -= 1
            _store.leave(topic, state, now)

    async def ping(self) -> None:
        """Always answers: the store is this process's memory."""

    async def sweep(self) -> bool:
        """Drop expired history, and release the topics unused for long enough (see the module
        docstring): at most :data:`SWEEP_BATCH` topics and messages of work per call."""
        with _store.lock:
            return _store.sweep(time.time(), SWEEP_BATCH)

    async def publish(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Message:
        loop = asyncio.get_running_loop()
        now = time.time()
        size, ttl = self.history_limits(topic)
        with _store.lock:
            state = self._state(topic, now)
            _store.trim(state, size, now)
            if msg_id is not None and (seen := state.msg_ids.get(msg_id)) is not None:
                return seen
            state.offset += 1
            message = Message(topic, payload, state.offset, state.epoch, now, json=json)
            state.touched = now
            if size > 0 and ttl > 0:
                _store.append(state, message)
                if msg_id is not None:
                    state.msg_ids[msg_id] = message
                _store.trim(state, size, now)
                if self.history_max_bytes is not None and (
                    evicted := _store.evict(self.history_max_bytes, now)
                ):
                    metrics.HISTORY_EVICTIONS.inc(evicted)
            _store.settle(topic, state, now)
            dead = [lis for lis in _store.listeners if not lis.push(message, loop)]
            for listener in dead:
                _store.listeners.remove(listener)
        return message

    async def forward(self, message: Message) -> None:
        loop = asyncio.get_running_loop()
        with _store.lock:
            dead = [lis for lis in _store.listeners if not lis.push(message, loop)]
            for listener in dead:
                _store.listeners.remove(listener)

    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        """A topic without state answers offset 0 in a new epoch, and keeps no state."""
        now = time.time()
        with _store.lock:
            state = _store.topics.get(topic)
            if state is not None:
                _store.trim(state, self.history_limits(topic)[0], now)
                _store.settle(topic, state, now)
            if state is None or _store.topics.get(topic) is not state:
                return HistoryPage([], 0, secrets.token_hex(4), True)
            messages = [m for m in state.history if m.offset > since]
            oldest_kept = messages[0].offset if messages else state.offset + 1
            complete = since >= state.offset or oldest_kept == since + 1
            if limit is not None:
                messages = messages[:limit]
            return HistoryPage(messages, state.offset, state.epoch, complete)

    async def presence_add(self, topic: str, client: str, info: dict[str, object]) -> None:
        with _store.lock:
            self._state(topic, time.time()).presence[client] = info

    async def presence_remove(self, topic: str, client: str) -> None:
        with _store.lock:
            state = _store.topics.get(topic)
            if state is not None and state.presence.pop(client, None) is not None:
                _store.leave(topic, state, time.time())

    async def presence(self, topic: str) -> dict[str, dict[str, object]]:
        """Entries are removed when their connection closes; a dead process takes them along."""
        with _store.lock:
            state = _store.topics.get(topic)
            return dict(state.presence) if state is not None else {}


metrics.gauge_read_at_scrape(
    "megaphone_memory_topics",
    "Topics the in-memory backend keeps state for (subscribed, with presence or history).",
    lambda: len(_store.topics),
)
metrics.gauge_read_at_scrape(
    "megaphone_memory_history_bytes",
    "Bytes of history the in-memory backend holds, as counted against HISTORY_MAX_BYTES.",
    lambda: _store.history_bytes,
)
