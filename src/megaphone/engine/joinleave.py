"""Join/leave events, coalesced per topic so that churn cannot flood the topic's watchers.

A process announces the join and leave events of its own clients through one
:class:`JoinLeave`. On a quiet topic an event goes out at once and opens a window of
``JOIN_LEAVE_INTERVAL`` seconds; the events of the topic announced during the window are held and,
when it ends, only their net effect goes out, per client: a client that joined and left within
the window sends nothing, one that left and joined again sends nothing (or a ``leave`` then a
``join`` if its ``info`` changed), any other sends its last event. If anything went out, the next
window opens at once. So one process sends a topic's watchers at most one batch per window, of at
most two events per client whose presence changed, however fast its clients subscribe and
unsubscribe. A client's presence entry (the ``presence`` op) is never delayed: only the events are.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from megaphone.backends import BackendUnavailable
from megaphone.conf import get_config
from megaphone.core.logs import get_logger
from megaphone.protocol.schema import presence_event, presence_topic

logger = get_logger(__name__)

#: Publishes a join/leave frame's text as JSON on a presence topic: ``(topic, text)``.
Publish = Callable[[str, str], Awaitable[object]]


class _Change:
    """The events of one client on one topic held during a window: the first and the last."""

    __slots__ = ("first", "first_entry", "last", "last_entry")

    def __init__(self, kind: str, entry: dict[str, Any]) -> None:
        self.first, self.first_entry = kind, entry
        self.last, self.last_entry = kind, entry

    def net(self) -> list[tuple[str, dict[str, Any]]]:
        """The events that take a watcher from the state before the window to the state now."""
        if self.first == self.last:  # joined (or left) an odd number of times: it did, once
            return [(self.last, self.last_entry)]
        if self.first == "join":  # was absent, joined and left: absent still
            return []
        if self.first_entry.get("info") == self.last_entry.get("info"):
            return []  # was present, left and joined again as it was: present still
        return [("leave", self.first_entry), ("join", self.last_entry)]


class JoinLeave:
    """This process's join/leave announcer; see the module docstring."""

    def __init__(self, publish: Publish) -> None:
        self._publish = publish
        self._windows: dict[str, asyncio.TimerHandle] = {}  # topics in a window
        self._held: dict[str, dict[str, _Change]] = {}  # topic -> client -> held events
        self._sending: set[asyncio.Task[None]] = set()

    def announce(self, kind: str, topic: str, entry: dict[str, Any]) -> None:
        """Announce that ``entry["client"]`` joined (``kind`` "join") or left ``topic``."""
        if topic not in self._windows:
            self._send(topic, [(kind, entry)])
            return
        held = self._held.setdefault(topic, {})
        change = held.get(entry["client"])
        if change is None:
            held[entry["client"]] = _Change(kind, entry)
        else:
            change.last, change.last_entry = kind, entry

    def _send(self, topic: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        """Publish ``events`` in order, and open a window on ``topic``."""
        loop = asyncio.get_running_loop()
        self._windows[topic] = loop.call_later(
            get_config().JOIN_LEAVE_INTERVAL, self._window_ended, topic
        )
        task = loop.create_task(self._publish_all(topic, events))
        self._sending.add(task)
        task.add_done_callback(self._sending.discard)

    def _window_ended(self, topic: str) -> None:
        del self._windows[topic]
        held = self._held.pop(topic, {})
        events = [event for change in held.values() for event in change.net()]
        if events:
            self._send(topic, events)

    async def _publish_all(self, topic: str, events: list[tuple[str, dict[str, Any]]]) -> None:
        try:
            for kind, entry in events:
                await self._publish(presence_topic(topic), presence_event(kind, topic, entry))
        except BackendUnavailable as exc:
            logger.error("join/leave events on %s not sent: %s", topic, exc)

    def stop(self) -> None:
        """Drop held events and stop the windows (the node is stopping)."""
        for handle in self._windows.values():
            handle.cancel()
        self._windows.clear()
        self._held.clear()
        for task in self._sending:
            task.cancel()
