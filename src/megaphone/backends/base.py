"""The backend interface: what every backend guarantees.

A backend does two jobs for the processes of one deployment:

* **Ordering and history.** :meth:`Backend.publish` gives each message the next ``offset`` of its
  topic (1, 2, 3... strictly increasing, no gap) and the topic's current ``epoch``, stores it in
  the topic's bounded history, and only then returns it. The epoch changes whenever the topic's
  history is lost (backend restarted, keys evicted): offsets from an older epoch mean nothing in the
  new one, and recovery across epochs is refused, never guessed.
* **Fan-out.** Every message published in any process is handed to the ``on_message`` callback of
  every process that has called :meth:`Backend.subscribe` for its topic, once, in offset order.
  Delivery through the bus is *at most once*: a message lost in transit (a network blip) shows up
  as a gap in offsets, which the receiver fills from :meth:`Backend.history` or reports as lost.

* **Idempotent publishing.** A publish with a ``msg_id`` that the topic already accepted (and
  still holds in its history) is not stored or fanned out again: it returns the message accepted
  the first time. A client can therefore retry a publish whose answer it missed.
* **Presence.** :meth:`Backend.presence_add` / :meth:`Backend.presence_remove` /
  :meth:`Backend.presence` keep, per topic, who is subscribed, across processes. Entries that a
  shared backend did not see refreshed (re-added) for ``presence_ttl`` seconds may be dropped, so
  the entries of a process that died vanish; callers re-add their entries more often than that.

Per-topic history limits come from ``limits(topic) -> (size, ttl)`` when given, else from
``history_size`` and ``history_ttl``: see :meth:`Backend.history_limits`. ``history_max_bytes``
bounds the history a backend keeps in this process's memory, all topics together.

* **Bounded state.** A backend keeps nothing for a topic that has no subscriber, no presence
  entry and no message in history, beyond :func:`epoch_ttl` after its last use: expired history
  is dropped in the background (:meth:`Backend.sweep`, called by the node about every second),
  not on the topic's next use. A topic whose state was released starts again in a new epoch.
  Reading a topic (history, recovery) keeps or creates at most its epoch, for that long.

Publishing raises :class:`BackendUnavailable` when the message could not be accepted; it never
pretends. ``on_message`` is called on the event loop that called :meth:`Backend.start`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass

from megaphone.core.message import Message

MessageCallback = Callable[[Message], None]
#: ``topic -> (history_size, history_ttl)``: the history limits of one topic.
HistoryLimits = Callable[[str], tuple[int, float]]


#: Least seconds a backend keeps a topic's epoch and offset after the topic's last use, even when
#: it keeps no history (see :func:`epoch_ttl`).
MIN_EPOCH_TTL = 5.0


def epoch_ttl(size: int, ttl: float) -> float:
    """Seconds a topic's epoch and offset outlive its last use (its last publish or read, or
    its last subscriber leaving), for a history of ``size`` messages and ``ttl`` seconds: as
    long as its history, at least :data:`MIN_EPOCH_TTL`. A client that lost its connection
    resumes within that time; after it, the topic starts again in a new epoch."""
    return max(ttl if size > 0 else 0.0, MIN_EPOCH_TTL)


class BackendUnavailable(RuntimeError):
    """The backend could not accept or answer the request (e.g. Redis unreachable)."""


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """A slice of a topic's history.

    ``messages`` are in offset order. ``offset`` and ``epoch`` are the topic's latest position
    (0 if nothing was ever published in this epoch). ``complete`` is True when ``messages`` holds
    every message after the requested offset, i.e. nothing was trimmed from history in between.
    """

    messages: list[Message]
    offset: int
    epoch: str
    complete: bool


class Backend(ABC):
    """One instance per process and event loop; see the module docstring for the guarantees."""

    #: True when a publish waits for a network round trip, and the backend applies publishes in
    #: the order they were *called*, even when the caller does not wait for one before making
    #: the next (its coroutines started in that order). A client's burst can then be published
    #: in one round trip instead of one per message (see ``BroadcastConsumer``).
    pipelines_publishes = False

    def __init__(
        self,
        url: str,
        *,
        history_size: int = 1000,
        history_ttl: float = 600.0,
        limits: HistoryLimits | None = None,
        presence_ttl: float = 60.0,
        history_max_bytes: int | None = None,
    ) -> None:
        self.url = url
        self.history_max_bytes = history_max_bytes
        self.history_size = history_size
        self.history_ttl = history_ttl
        self.presence_ttl = presence_ttl
        self._limits = limits

    def history_limits(self, topic: str) -> tuple[int, float]:
        """``(size, ttl)`` of ``topic``'s history: at most ``size`` messages, none older than
        ``ttl`` seconds. Backends apply it when they store a message."""
        if self._limits is not None:
            return self._limits(topic)
        return self.history_size, self.history_ttl

    @abstractmethod
    async def start(self, on_message: MessageCallback) -> None:
        """Connect; from now on, messages of subscribed topics go to ``on_message``."""

    @abstractmethod
    async def stop(self) -> None:
        """Disconnect and release every resource; ``on_message`` is not called any more."""

    @abstractmethod
    async def publish(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Message:
        """Assign the next offset, store in history, fan out; return the stored message.

        ``json`` is stored with the message (:attr:`Message.json`). With ``msg_id``, a message
        already accepted on ``topic`` with that id and still in its history is returned instead,
        and nothing is published.
        """

    @abstractmethod
    async def subscribe(self, topic: str) -> None:
        """Start receiving ``topic``'s messages in this process (idempotent)."""

    @abstractmethod
    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``'s messages in this process (idempotent)."""

    @abstractmethod
    async def ping(self) -> None:
        """Raise :class:`BackendUnavailable` unless the backend answers now (``/readyz``)."""

    @abstractmethod
    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        """Messages of ``topic`` with offset > ``since``, oldest first, at most ``limit``.

        ``complete`` says whether the history still held every message after ``since`` (before
        ``limit`` applies). A topic without state answers offset 0 (in the epoch its next
        publish will get, or a new one: see each backend).
        """

    async def sweep(self) -> bool:
        """One bounded round of background upkeep (dropping expired state, keeping the shared
        state of subscribed topics alive); return True if more is due now. Never blocks the
        loop for long: call it again, after yielding, while it returns True."""
        return False

    async def forward(self, message: Message) -> None:
        """Fan out ``message``, numbered elsewhere (a durable topic's database), to every
        process subscribed to its topic, like a published one, without storing or renumbering
        it. Same at-most-once delivery as :meth:`publish`; receivers fill gaps from history."""
        raise BackendUnavailable(f"{type(self).__name__} cannot forward messages")

    # Presence. Override all three; the defaults say the backend has no presence.

    async def presence_add(self, topic: str, client: str, info: dict[str, object]) -> None:
        """Record (or refresh) that connection ``client`` is subscribed to ``topic``.

        ``info`` is a small JSON-serialisable dict (user, client info) returned by
        :meth:`presence`. Idempotent: adding again replaces ``info`` and refreshes the entry.
        """
        raise BackendUnavailable(f"{type(self).__name__} does not keep presence")

    async def presence_remove(self, topic: str, client: str) -> None:
        """Forget ``client`` on ``topic`` (a no-op if it is not there)."""
        raise BackendUnavailable(f"{type(self).__name__} does not keep presence")

    async def presence(self, topic: str) -> dict[str, dict[str, object]]:
        """Every live entry of ``topic``: ``{client: info}``."""
        raise BackendUnavailable(f"{type(self).__name__} does not keep presence")
