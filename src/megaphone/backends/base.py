"""The backend interface: small typed protocols, and what every implementation guarantees.

A backend is made of three parts, each a :class:`typing.Protocol` with its guarantees in its
docstring, which an implementation satisfies by shape (no base class is required):

* :class:`Broker`: fan-out across processes (subscribe, forward a numbered message, start/stop).
* :class:`HistoryStore`: numbering (offset, epoch) and the bounded history of each topic, with
  idempotency by ``msg_id``. Appending stores a message without fanning it out.
* :class:`PresenceStore`: who is subscribed to a topic, in every process, with expiry.

:class:`Backend` is what the node holds: a broker whose :meth:`~Backend.publish` numbers,
stores *and* fans out a message in one step (the built-in backends do both in one operation: a
Redis script, one lock), with the history read of :class:`HistoryStore`. A history store without
a broker of its own becomes a backend by wrapping one: :class:`~.durable.DurableTopics` keeps
durable topics in a :class:`HistoryStore` (the Django database) and fans them out through the
wrapped backend's :meth:`~Broker.forward`.

Optional capabilities are declared, never sniffed: :attr:`Backend.presence_store` is the
backend's :class:`PresenceStore`, or None when it keeps no presence; :attr:`Backend.cluster_topics`
counts the topics listened to in every process (:class:`ClusterTopics`), or is None when the
backend cannot. :class:`BaseBackend` is a convenient base class (the options, their defaults,
neither capability); subclassing it is optional.

The guarantees, in one place (tests/backends/conformance.py checks them for every backend):

* **Ordering and history.** Publishing gives each message the next ``offset`` of its topic
  (1, 2, 3... strictly increasing, no gap) and the topic's current ``epoch``, stores it in the
  topic's bounded history, and only then returns it. The epoch changes whenever the topic's
  history is lost (backend restarted, keys evicted, state released): offsets from an older epoch
  mean nothing in the new one, and recovery across epochs is refused, never guessed.
* **Fan-out.** Every message published in any process is handed to the ``on_message`` callback of
  every process that has subscribed to its topic, once, in offset order. Delivery through the bus
  is *at most once*: a message lost in transit (a network blip) shows up as a gap in offsets,
  which the receiver fills from the history or reports as lost.
* **Idempotent publishing.** A publish with a ``msg_id`` that the topic already accepted (and
  still holds in its history) is not stored or fanned out again: it returns the message accepted
  the first time. A client can therefore retry a publish whose answer it missed.
* **Presence.** Per topic, who is subscribed, across processes. Entries that a shared backend did
  not see refreshed (re-added) for ``presence_ttl`` seconds may be dropped, so the entries of a
  process that died vanish; callers re-add their entries more often than that.
* **Bounded state.** A backend keeps nothing for a topic that has no subscriber, no presence
  entry and no message in history, beyond :func:`epoch_ttl` after its last use: expired history
  is dropped in the background (``sweep()``, called by the node about every second), not on the
  topic's next use. A topic whose state was released starts again in a new epoch. Reading a
  topic (history, recovery) keeps or creates at most its epoch, for that long.
* **Loud failures.** A call that could not be carried out raises :class:`BackendUnavailable`; it
  never pretends. ``on_message`` is called on the event loop that called ``start()``.

Per-topic history limits come from ``limits(topic) -> (size, ttl)`` when given, else from
``history_size`` and ``history_ttl`` (see :meth:`HistoryStore.history_limits`);
``history_max_bytes`` bounds the history a backend keeps in this process's memory, all topics
together. Every backend class is built as ``Class(url, **options)`` with the options of
:class:`BaseBackend` (see :func:`megaphone.backends.backend_from_url`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, Protocol

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


class Appended(NamedTuple):
    """What :meth:`HistoryStore.append` did: the stored ``message``, and whether it is ``new``
    (False: a ``msg_id`` the topic already accepted; ``message`` is the one accepted then)."""

    message: Message
    new: bool


class Broker(Protocol):
    """Fan-out across processes: every started broker subscribed to a topic receives the
    messages forwarded (or published) on it in any process, **at most once**, in the order they
    were sent; a lost one is a gap in offsets, never a reorder or a duplicate."""

    async def start(self, on_message: MessageCallback) -> None:
        """Connect; from now on, messages of subscribed topics go to ``on_message``, on the
        event loop that called this. Needs no server to be up (each call fails instead)."""

    async def stop(self) -> None:
        """Disconnect and release every resource; ``on_message`` is not called any more."""

    async def subscribe(self, topic: str) -> None:
        """Start receiving ``topic``'s messages in this process (idempotent). Returns once every
        message sent from then on will be received; raises :class:`BackendUnavailable` if that
        cannot be promised."""

    async def unsubscribe(self, topic: str) -> None:
        """Stop receiving ``topic``'s messages in this process (idempotent)."""

    async def forward(self, message: Message) -> None:
        """Fan out ``message``, numbered elsewhere (a :class:`HistoryStore`), to every process
        subscribed to its topic, without storing or renumbering it. Raises
        :class:`BackendUnavailable` when it could not be sent."""

    async def ping(self) -> None:
        """Raise :class:`BackendUnavailable` unless the backend answers now (``/readyz``)."""


class HistoryStore(Protocol):
    """Offsets, epochs and the bounded history of each topic.

    * :meth:`append` gives the next offset of the topic (1, 2, 3... no gap, no reuse within an
      epoch) in its current epoch, stores the message, trims the history to
      :meth:`history_limits` (at most ``size`` messages, none older than ``ttl`` seconds), and
      only then returns. A ``msg_id`` the topic still holds in its history answers the message
      stored then (``new`` False), stores nothing.
    * When the topic's history is lost (its state released, the store restarted empty), its
      offsets start again at 1 in a *new* epoch, never the old one.
    * :meth:`history` never writes a message, and keeps or creates at most the topic's epoch.
    * Failures raise :class:`BackendUnavailable`.
    """

    def history_limits(self, topic: str) -> tuple[int, float]:
        """``(size, ttl)`` of ``topic``'s history: at most ``size`` messages, none older than
        ``ttl`` seconds. Applied when a message is stored."""
        ...

    async def append(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Appended:
        """Number and store a message (see the class docstring); fan nothing out."""
        ...

    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        """Messages of ``topic`` with offset > ``since``, oldest first, at most ``limit``.

        ``complete`` says whether the history still held every message after ``since`` (before
        ``limit`` applies): False when some were trimmed, True when ``since`` is the latest
        offset or beyond it (there is nothing to miss in this epoch). A topic without state
        answers offset 0, in the epoch its next message will get or in a new one.
        """
        ...

    async def sweep(self) -> bool:
        """One bounded round of background upkeep (dropping expired history, releasing unused
        topics); return True if more is due now. Never blocks the loop for long: the node calls
        it again, after yielding, while it returns True, and about every second otherwise."""
        ...


class PresenceStore(Protocol):
    """Per topic, the connections subscribed to it, in every process.

    Adding is idempotent (it replaces ``info`` and refreshes the entry). In a store shared by
    several processes, an entry not re-added for :attr:`presence_ttl` seconds is dropped, so the
    entries of a process that died vanish; a store private to one process may keep them until
    removed (the process's death takes them along). Failures raise :class:`BackendUnavailable`.
    """

    @property
    def presence_ttl(self) -> float:
        """Seconds an entry lives in a shared store without being re-added."""
        ...

    async def presence_add(self, topic: str, client: str, info: dict[str, object]) -> None:
        """Record (or refresh) that connection ``client`` is subscribed to ``topic``; ``info``
        is a small JSON-serialisable dict, returned by :meth:`presence`."""
        ...

    async def presence_remove(self, topic: str, client: str) -> None:
        """Forget ``client`` on ``topic`` (a no-op if it is not there)."""
        ...

    async def presence(self, topic: str) -> dict[str, dict[str, object]]:
        """Every live entry of ``topic``: ``{client: info}``."""
        ...


class ClusterTopics(Protocol):
    """A backend that can list the topics listened to in every process sharing it."""

    async def listened_topics(self) -> dict[str, int]:
        """Every topic some process listens to (has subscribed), with how many processes do,
        exact when the backend answers. Raises :class:`BackendUnavailable`."""
        ...


class Backend(Broker, Protocol):
    """What the node holds: a :class:`Broker` that also numbers, stores and reads history, with
    its optional capabilities declared (see the module docstring for the guarantees)."""

    #: The setting it was built from (``MEGAPHONE["BACKEND"]``).
    url: str
    #: True when a message published in this process reaches the subscribers of other
    #: processes (Redis); False when only this process's (memory): publishing from a process
    #: that serves no client is then refused (``NoServerHere``). No default: declare it.
    crosses_processes: bool
    #: True when a publish waits for a network round trip, and the backend applies publishes in
    #: the order they were *called*, even when the caller does not wait for one before making
    #: the next (its coroutines started in that order). A client's burst can then be published
    #: in one round trip instead of one per message (see ``BroadcastConsumer``).
    pipelines_publishes: bool

    @property
    def name(self) -> str:
        """What errors and ``/readyz`` call the backend (e.g. ``"RedisBackend"``)."""
        ...

    @property
    def presence_store(self) -> PresenceStore | None:
        """The backend's presence, or None when it keeps none."""
        ...

    @property
    def cluster_topics(self) -> ClusterTopics | None:
        """The backend's count of listened topics across processes, or None when it cannot."""
        ...

    def history_limits(self, topic: str) -> tuple[int, float]:
        """As :meth:`HistoryStore.history_limits`."""
        ...

    async def publish(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Message:
        """:meth:`HistoryStore.append` then :meth:`Broker.forward` (when new) in one step;
        return the stored message. ``json`` is stored with it (:attr:`Message.json`)."""
        ...

    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        """As :meth:`HistoryStore.history`."""
        ...

    async def sweep(self) -> bool:
        """As :meth:`HistoryStore.sweep`, for everything the backend keeps."""
        ...


class BaseBackend:
    """The options every built-in backend takes, and the defaults of :class:`Backend`: no
    presence, no cluster-wide topic count, publishes not pipelined, nothing to sweep.
    Subclassing it is a convenience, not a requirement."""

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

    @property
    def name(self) -> str:
        """The class's name."""
        return type(self).__name__

    @property
    def presence_store(self) -> PresenceStore | None:
        return None

    @property
    def cluster_topics(self) -> ClusterTopics | None:
        return None

    def history_limits(self, topic: str) -> tuple[int, float]:
        """``(size, ttl)`` of ``topic``'s history: ``limits(topic)`` when given, else
        ``(history_size, history_ttl)``."""
        if self._limits is not None:
            return self._limits(topic)
        return self.history_size, self.history_ttl

    async def sweep(self) -> bool:
        return False
