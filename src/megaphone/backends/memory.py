"""The in-memory backend: one process, no dependencies, the default.

All :class:`MemoryBackend` instances of a process share one store, so a message published from
any event loop or thread of the process (a view run in a thread, a test's loop) reaches every
started backend of that process, each on its own loop, in offset order. Nothing crosses process
boundaries: run one worker process with this backend (a system check enforces it), or use Redis.

History lives in the process: it is bounded by ``history_size`` messages per topic and by
``history_ttl`` seconds, and is lost when the process exits, which gives every topic a new epoch.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections import deque

from ..message import Message
from .base import Backend, HistoryPage, MessageCallback


class _Topic:
    __slots__ = ("epoch", "history", "msg_ids", "offset", "presence")

    def __init__(self) -> None:
        self.epoch = secrets.token_hex(4)
        self.offset = 0
        self.history: deque[Message] = deque()
        # msg_id -> message, oldest first; pruned with the history it points into.
        self.msg_ids: dict[str, Message] = {}
        self.presence: dict[str, dict[str, object]] = {}

    def trim(self, size: int, ttl: float, now: float) -> None:
        history = self.history
        while len(history) > size:
            history.popleft()
        deadline = now - ttl
        while history and history[0].time < deadline:
            history.popleft()
        if self.msg_ids:
            oldest = history[0].offset if history else self.offset + 1
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
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.topics: dict[str, _Topic] = {}
        self.listeners: list[_Listener] = []


_store = _Store()


class MemoryBackend(Backend):
    """Single-process backend; see the module docstring."""

    _listener: _Listener | None = None

    async def start(self, on_message: MessageCallback) -> None:
        self._listener = _Listener(asyncio.get_running_loop(), on_message)
        with _store.lock:
            _store.listeners.append(self._listener)

    async def stop(self) -> None:
        with _store.lock:
            if self._listener in _store.listeners:
                _store.listeners.remove(self._listener)
        self._listener = None

    async def subscribe(self, topic: str) -> None:
        """Nothing to do: a process-local store already sees every topic."""

    async def unsubscribe(self, topic: str) -> None:
        """Nothing to do: see :meth:`subscribe`."""

    async def ping(self) -> None:
        """Always answers: the store is this process's memory."""

    async def publish(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Message:
        loop = asyncio.get_running_loop()
        now = time.time()
        size, ttl = self.history_limits(topic)
        with _store.lock:
            state = _store.topics.get(topic)
            if state is None:
                state = _store.topics[topic] = _Topic()
            state.trim(size, ttl, now)
            if msg_id is not None and (seen := state.msg_ids.get(msg_id)) is not None:
                return seen
            state.offset += 1
            message = Message(topic, payload, state.offset, state.epoch, now, json=json)
            state.history.append(message)
            if msg_id is not None:
                state.msg_ids[msg_id] = message
            state.trim(size, ttl, now)
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
        with _store.lock:
            state = _store.topics.get(topic)
            if state is None:
                state = _store.topics[topic] = _Topic()
            state.trim(*self.history_limits(topic), time.time())
            messages = [m for m in state.history if m.offset > since]
            oldest_kept = messages[0].offset if messages else state.offset + 1
            complete = since >= state.offset or oldest_kept == since + 1
            if limit is not None:
                messages = messages[:limit]
            return HistoryPage(messages, state.offset, state.epoch, complete)

    async def presence_add(self, topic: str, client: str, info: dict[str, object]) -> None:
        with _store.lock:
            state = _store.topics.get(topic)
            if state is None:
                state = _store.topics[topic] = _Topic()
            state.presence[client] = info

    async def presence_remove(self, topic: str, client: str) -> None:
        with _store.lock:
            state = _store.topics.get(topic)
            if state is not None:
                state.presence.pop(client, None)

    async def presence(self, topic: str) -> dict[str, dict[str, object]]:
        """Entries are removed when their connection closes; a dead process takes them along."""
        with _store.lock:
            state = _store.topics.get(topic)
            return dict(state.presence) if state is not None else {}
