"""The in-memory backend: one process, no dependencies, the default.

All :class:`MemoryBackend` instances of a process share one store, so a message published from
any event loop or thread of the process (a view run in a thread, a test's loop) reaches every
started backend of that process, each on its own loop, in offset order. Nothing crosses process
boundaries: run one worker process with this backend (a system check enforces it), or use Redis.

History lives in the process: it is bounded by ``history_size`` messages per topic, by
``history_ttl`` seconds, and by ``history_max_bytes`` over all topics together, and is lost when
the process exits, which gives every topic a new epoch.

What the store keeps, and for how long (nothing grows with topics that nobody uses):

* A topic's state (epoch, offset, history, ``msg_id`` index, presence) exists while the topic
  has a subscribed backend, a presence entry or a message in history, and is released as soon
  as it has none: its next use starts a new epoch at offset 0, which recovery reports as
  ``recovered: false``. A read of a topic without state (history, recovery) creates nothing.
* Expired messages are dropped in the background by :meth:`MemoryBackend.sweep` (the node calls
  it about every second), not on the topic's next use: the store keeps one entry per topic with
  history in a heap ordered by when its oldest message expires, so a sweep touches only the
  topics with something to drop, at most :data:`SWEEP_BATCH` of them per call.
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

from .. import metrics
from ..message import Message
from .base import Backend, HistoryPage, MessageCallback

#: Bytes a message costs in history besides its payload (the message object, its slot in the
#: topic's deque, its time and offset), as counted against ``history_max_bytes``.
MESSAGE_OVERHEAD = 200
#: Most topics one :meth:`MemoryBackend.sweep` call expires history of.
SWEEP_BATCH = 1000


def _cost(message: Message) -> int:
    return sys.getsizeof(message.payload) + MESSAGE_OVERHEAD


class _Topic:
    """One topic's state. ``expires`` is the deadline of its entry in the store's expiry heap
    (None: it has none, its history is empty); ``ttl`` the TTL its history was stored with;
    ``subscribers`` how many started backends subscribed to it."""

    __slots__ = (
        "epoch",
        "expires",
        "history",
        "msg_ids",
        "offset",
        "presence",
        "subscribers",
        "ttl",
    )

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        self.history: deque[Message] = deque()
        # msg_id -> message, oldest first; pruned with the history it points into.
        self.msg_ids: dict[str, Message] = {}
        self.presence: dict[str, dict[str, object]] = {}
        self.subscribers = 0
        self.ttl = 0.0
        self.expires: float | None = None

    def unused(self) -> bool:
        return not (self.history or self.presence or self.subscribers)

    def head_deadline(self) -> float:
        """When the oldest message in history expires (history must not be empty)."""
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
        if self.msg_ids:
            oldest = self.history[0].offset if self.history else self.offset + 1
            for msg_id, message in list(self.msg_ids.items()):
                if message.offset >= oldest:
                    break
                del self.msg_ids[msg_id]


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
        # (deadline, topic): when the oldest message of each topic with history expires. One
        # live entry per such topic (its ``expires``); an entry that no longer matches is stale
        # and skipped when popped.
        self.expiry: list[tuple[float, str]] = []
        #: Cost of every message in history (see :func:`_cost`).
        self.history_bytes = 0

    def topic(self, name: str) -> _Topic:
        """``name``'s state, created (new epoch, offset 0) if it has none."""
        state = self.topics.get(name)
        if state is None:
            state = self.topics[name] = _Topic()
        return state

    def release_if_unused(self, name: str, state: _Topic) -> None:
        if state.unused() and self.topics.get(name) is state:
            del self.topics[name]

    def append(self, name: str, state: _Topic, message: Message) -> None:
        state.history.append(message)
        self.history_bytes += _cost(message)
        self._schedule(name, state)

    def trim(self, name: str, state: _Topic, size: int, now: float) -> None:
        self.history_bytes -= state.trim(size, now)
        if not state.history:
            state.expires = None

    def _schedule(self, name: str, state: _Topic) -> None:
        """Give ``state`` an expiry entry for its oldest message, unless it has one."""
        if state.history and state.expires is None:
            state.expires = state.head_deadline()
            heapq.heappush(self.expiry, (state.expires, name))

    def _pop_due(self, now: float) -> tuple[str, _Topic] | None:
        """The topic whose oldest message expires first, if that is no later than ``now``; its
        entry is removed (the caller reschedules it). Stale entries are dropped on the way."""
        expiry = self.expiry
        while expiry and expiry[0][0] <= now:
            deadline, name = heapq.heappop(expiry)
            state = self.topics.get(name)
            if state is None or state.expires != deadline:
                continue  # stale: released, or rescheduled since
            state.expires = None
            if state.history and state.head_deadline() > deadline:  # trimmed meanwhile
                self._schedule(name, state)
                continue
            return name, state
        return None

    def sweep(self, now: float, limit: int) -> bool:
        """Drop the history expired at ``now`` of at most ``limit`` topics, and release those
        left unused; return True if more is due."""
        for _ in range(limit):
            due = self._pop_due(now)
            if due is None:
                return False
            name, state = due
            self.trim(name, state, len(state.history), now)
            self._schedule(name, state)
            self.release_if_unused(name, state)
        return bool(self.expiry) and self.expiry[0][0] <= now

    def evict(self, max_bytes: int) -> int:
        """Evict messages, the first to expire first, until history costs at most
        ``max_bytes``; return how many."""
        evicted = 0
        while self.history_bytes > max_bytes:
            due = self._pop_due(float("inf"))
            if due is None:
                break
            name, state = due
            self.history_bytes -= state.drop_oldest()
            evicted += 1
            self._schedule(name, state)
            self.release_if_unused(name, state)
        return evicted


_store = _Store()


class MemoryBackend(Backend):
    """Single-process backend; see the module docstring."""

    _listener: _Listener | None = None

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        # Topics this instance subscribed to: each counts once in its topic's ``subscribers``.
        self._subscribed: set[str] = set()

    async def start(self, on_message: MessageCallback) -> None:
        self._listener = _Listener(asyncio.get_running_loop(), on_message)
        with _store.lock:
            _store.listeners.append(self._listener)

    async def stop(self) -> None:
        with _store.lock:
            if self._listener in _store.listeners:
                _store.listeners.remove(self._listener)
            for topic in self._subscribed:
                self._leave(topic)
        self._subscribed.clear()
        self._listener = None

    async def subscribe(self, topic: str) -> None:
        """Keep ``topic``'s state (its epoch above all) while subscribed: a process-local
        store already sees every message."""
        if topic in self._subscribed:
            return
        self._subscribed.add(topic)
        with _store.lock:
            _store.topic(topic).subscribers += 1

    async def unsubscribe(self, topic: str) -> None:
        """The topic's state is released if nothing else holds it (see the module docstring)."""
        if topic not in self._subscribed:
            return
        self._subscribed.discard(topic)
        with _store.lock:
            self._leave(topic)

    @staticmethod
    def _leave(topic: str) -> None:
        state = _store.topics.get(topic)
        if state is not None:
            state.subscribers -= 1
            _store.release_if_unused(topic, state)

    async def ping(self) -> None:
        """Always answers: the store is this process's memory."""

    async def sweep(self) -> bool:
        """Drop expired history, and release the topics left unused (see the module docstring):
        at most :data:`SWEEP_BATCH` topics per call."""
        with _store.lock:
            return _store.sweep(time.time(), SWEEP_BATCH)

    async def publish(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Message:
        loop = asyncio.get_running_loop()
        now = time.time()
        size, ttl = self.history_limits(topic)
        with _store.lock:
            state = _store.topic(topic)
            state.ttl = ttl
            _store.trim(topic, state, size, now)
            if msg_id is not None and (seen := state.msg_ids.get(msg_id)) is not None:
                return seen
            state.offset += 1
            message = Message(topic, payload, state.offset, state.epoch, now, json=json)
            if size > 0 and ttl > 0:
                _store.append(topic, state, message)
                if msg_id is not None:
                    state.msg_ids[msg_id] = message
                _store.trim(topic, state, size, now)
                if self.history_max_bytes is not None and (
                    evicted := _store.evict(self.history_max_bytes)
                ):
                    metrics.HISTORY_EVICTIONS.inc(evicted)
            dead = [lis for lis in _store.listeners if not lis.push(message, loop)]
            for listener in dead:
                _store.listeners.remove(listener)
            _store.release_if_unused(topic, state)
        return message

    async def forward(self, message: Message) -> None:
        loop = asyncio.get_running_loop()
        with _store.lock:
            dead = [lis for lis in _store.listeners if not lis.push(message, loop)]
            for listener in dead:
                _store.listeners.remove(listener)

    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        """A topic without state answers offset 0 in a new epoch, and keeps no state."""
        with _store.lock:
            state = _store.topics.get(topic)
            if state is not None:
                _store.trim(topic, state, self.history_limits(topic)[0], time.time())
                _store.release_if_unused(topic, state)
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
            _store.topic(topic).presence[client] = info

    async def presence_remove(self, topic: str, client: str) -> None:
        with _store.lock:
            state = _store.topics.get(topic)
            if state is not None:
                state.presence.pop(client, None)
                _store.release_if_unused(topic, state)

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
