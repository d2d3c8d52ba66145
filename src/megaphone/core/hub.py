"""The hub: which local connections listen to which topic, in this process.

Pure logic: no Django, no sockets, no awaiting. The backend hands the hub each message once per
process; the hub hands it to every local subscriber of the topic, in the order it came. A
subscriber's :meth:`Subscriber.deliver` must not block: it queues the message (its outbox) and
returns. Encoding is the subscriber's business, and :meth:`Message.encoded` makes it happen once
per message, whatever the number of subscribers. A subscriber that raises does not keep the
message from the others.
"""

from __future__ import annotations

from typing import Protocol

from megaphone.core.logs import get_logger
from megaphone.core.message import Message

logger = get_logger(__name__)


class Subscriber(Protocol):
    def deliver(self, message: Message) -> None:
        """Queue ``message`` for sending. Never blocks, never raises for a slow peer."""


class Hub:
    """Topic -> local subscribers, each subscriber at most once per topic."""

    def __init__(self) -> None:
        # dict as an ordered set: deliveries go out in subscription order, deterministically.
        self._topics: dict[str, dict[Subscriber, None]] = {}

    def add(self, topic: str, subscriber: Subscriber) -> bool:
        """Subscribe; return True when ``topic`` had no local subscriber before."""
        subscribers = self._topics.get(topic)
        if subscribers is None:
            self._topics[topic] = {subscriber: None}
            return True
        subscribers[subscriber] = None
        return False

    def remove(self, topic: str, subscriber: Subscriber) -> bool:
        """Unsubscribe (a no-op if not subscribed); return True when ``topic`` has none left."""
        subscribers = self._topics.get(topic)
        if subscribers is None:
            return False
        subscribers.pop(subscriber, None)
        if subscribers:
            return False
        del self._topics[topic]
        return True

    def broadcast(self, message: Message) -> int:
        """Hand ``message`` to every local subscriber of its topic; return how many."""
        subscribers = self._topics.get(message.topic)
        if not subscribers:
            return 0
        # A subscriber may leave while we deliver (a full outbox closes it): iterate a snapshot.
        # One subscriber failing (a bug) is logged and costs the others nothing.
        for subscriber in tuple(subscribers):
            try:
                subscriber.deliver(message)
            except Exception:
                logger.exception("a subscriber of %r failed to take %r", message.topic, message)
        return len(subscribers)

    def subscribers(self, topic: str) -> int:
        """How many local subscribers ``topic`` has."""
        return len(self._topics.get(topic, ()))

    def members(self, topic: str) -> tuple[Subscriber, ...]:
        """The local subscribers of ``topic``, in subscription order (a snapshot)."""
        return tuple(self._topics.get(topic, ()))

    def topics(self) -> dict[str, int]:
        """Every topic with local subscribers, with their count."""
        return {topic: len(subs) for topic, subs in self._topics.items()}
