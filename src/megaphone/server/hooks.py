"""Hooks as Django signals: what the project's code may say about a client's message.

:data:`client_publish` is sent before a message a WebSocket client sent (the raw endpoint's
frames, the protocol's ``publish``) is published, once the policy allowed it. Its receivers are
called with ``topic``, ``data`` (what the client sent: the text, the bytes, or, for a protocol
client's JSON value, that value), ``user`` (the connection's principal) and ``endpoint``
(``"raw"`` or ``"protocol"``). A receiver may:

* return None: the message goes on as it is;
* return a replacement (``str``: text, ``bytes``: binary, anything else: its JSON, as
  :func:`megaphone.publish` takes it); the last receiver that returns one wins;
* raise :class:`PublishRejected`: nothing is published, and the client is told: the protocol
  client gets an ``error`` frame with the rejection's ``code`` and ``message``, the raw client
  is closed with 4403 (its close frames carry no code of ours).

Receivers may be sync (run in a worker thread, off the event loop: they may use the ORM) or
async (awaited). A receiver that raises anything else refuses the message too (code
``rejected``), and the error is logged with its traceback. With no receiver connected, nothing is
sent and publishing costs nothing more. Receivers run once per message, in the worker the
client is connected to::

    from django.dispatch import receiver
    from megaphone.server.hooks import PublishRejected, client_publish

    @receiver(client_publish)
    def moderate(sender, topic, data, user, endpoint, **kwargs):
        if isinstance(data, str) and "spam" in data:
            raise PublishRejected("spam", "no spam here")
        if topic.startswith("chat."):
            return {"text": data, "by": getattr(user, "username", None)}

:data:`presence_joined` and :data:`presence_left` are sent when a protocol client enters or
leaves a topic's presence (topics with ``presence`` on), once per event across all workers: by
the worker that client is connected to, after the backend recorded it, with ``topic``,
``client`` (its id in presence), ``user`` and ``info``. Each ``presence_joined`` is followed by
one ``presence_left`` for the same client and topic (unsubscribe, disconnect, or a lost place in
the topic before it resubscribes), except when the worker itself dies: the backend then expires
the entry (``PRESENCE_TTL``) and no signal is sent. Receivers run off the event loop (sync ones
in a worker thread); one that raises is logged and does not affect the client.

:data:`server_subscriptions` decides, at connect, which topics a ``/ws/connect/`` connection is
subscribed to without asking. Its receivers are called with ``user`` and ``scope`` (the ASGI
scope) and return topic names (any iterable, or None); the connection is subscribed to each
that any receiver names, and to those its connection token names
(:func:`megaphone.server.tokens.issue_token`'s ``subscriptions``)::

    @receiver(server_subscriptions)
    def own_topic(sender, user, scope, **kwargs):
        if user.is_authenticated:
            return [f"user:{user.pk}"]

Each such subscription is announced by a ``subscribed`` frame (the fields of a subscribe reply)
right after ``connected``, before the answer to any request of the client, and is then an
ordinary subscription (the client may unsubscribe from it). The policy (``PERMISSIONS``) still
decides: a topic it refuses is left out, logged, as are invalid names and those over
``MAX_SUBSCRIPTIONS``. Recovery: a client that reconnects puts its positions in the URL,
``?since=<JSON {topic: {"offset": n, "epoch": "..."}}>`` (megaphone.js does), and each server
subscription named there is recovered as a subscribe with ``since`` is (``recovered``,
``missed``, the missed messages). A receiver that raises is logged; the others still count.

:data:`topic_occupied` and :data:`topic_vacated` are sent, with ``topic``, when a topic gets its
first subscriber in the whole deployment (any endpoint, any worker) and when it loses its last:
once per change across all workers, by one of them, about ``0.5`` s after it (debounced: a flap
shorter than that sends nothing); see :mod:`megaphone.engine.occupancy` for how and its limits.
Workers take part only while a receiver is connected (connect them at startup, in ``ready()``).
Receivers run off the event loop; one that raises is logged.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

from django.dispatch import Signal

from megaphone.core.logs import get_logger
from megaphone.core.topics import InvalidTopic, validate_topic
from megaphone.engine.publishing import InvalidMessage, prepare

logger = get_logger(__name__)

#: Sent before a client's message is published; see the module docstring.
client_publish = Signal()
#: A client entered, or left, a topic's presence; see the module docstring.
presence_joined = Signal()
presence_left = Signal()
#: A topic got its first subscriber, or lost its last, across all workers; see the docstring.
topic_occupied = Signal()
topic_vacated = Signal()
#: Which topics a connection is subscribed to at connect; see the module docstring.
server_subscriptions = Signal()

_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")


class PublishRejected(Exception):
    """Raised by a :data:`client_publish` receiver: the message is not published and the client
    gets ``code`` (lowercase letters, digits and ``_``, at most 40) and ``message``."""

    def __init__(self, code: str = "rejected", message: str = "rejected by the server") -> None:
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            raise ValueError(f"a rejection code is [a-z][a-z0-9_]* of at most 40, not {code!r}")
        super().__init__(message)
        self.code = code
        self.message = str(message)


async def screen(
    topic: str, payload: str | bytes, is_json: bool, user: Any, endpoint: str
) -> tuple[str | bytes, bool]:
    """The message to publish after :data:`client_publish`'s receivers: ``(payload, is_json)``,
    or :class:`PublishRejected`."""
    # ``receivers`` first: an empty list is what Django's own send() checks first, and
    # has_listeners() (a lock and a scan) costs a microsecond on every publish of every client.
    if not client_publish.receivers or not client_publish.has_listeners():
        return payload, is_json
    data = json.loads(payload) if is_json else payload
    try:
        responses = await client_publish.asend(
            sender=endpoint, topic=topic, data=data, user=user, endpoint=endpoint
        )
    except PublishRejected:
        raise
    except Exception:
        logger.exception("a client_publish receiver failed on %s: message refused", topic)
        raise PublishRejected() from None
    replacements = [response for _, response in responses if response is not None]
    if not replacements:
        return payload, is_json
    try:
        _, payload, is_json = prepare(topic, replacements[-1])
    except InvalidMessage as exc:
        logger.error("a client_publish receiver's replacement on %s is invalid: %s", topic, exc)
        raise PublishRejected(exc.code or "rejected", str(exc)) from None
    return payload, is_json


async def send_presence(
    signal: Signal, topic: str, client: str, user: Any, info: dict[str, Any] | None
) -> None:
    """Send :data:`presence_joined` or :data:`presence_left`; a receiver's error is logged."""
    if not signal.has_listeners():
        return
    responses = await signal.asend_robust(
        sender="protocol", topic=topic, client=client, user=user, info=info
    )
    for _receiver, response in responses:
        if isinstance(response, Exception):
            logger.error("a presence receiver failed on %s", topic, exc_info=response)


async def subscriptions_for(user: Any, scope: dict[str, Any], named: Iterable[str]) -> list[str]:
    """The topics :data:`server_subscriptions`' receivers name for a connection, after
    ``named`` (its token's), in order, each once; invalid names are logged and left out."""
    topics = list(named)
    if server_subscriptions.has_listeners():
        responses = await server_subscriptions.asend_robust(
            sender="protocol", user=user, scope=scope
        )
        for _receiver, response in responses:
            if isinstance(response, Exception):
                logger.error("a server_subscriptions receiver failed", exc_info=response)
            elif response is not None:
                topics.extend(response)
    chosen: dict[str, None] = {}
    for topic in topics:
        try:
            chosen[validate_topic(topic)] = None
        except InvalidTopic as exc:
            logger.error("a server subscription left out: %s", exc)
    return list(chosen)


def occupancy_wanted() -> bool:
    """Whether a receiver listens to :data:`topic_occupied` or :data:`topic_vacated`."""
    return topic_occupied.has_listeners() or topic_vacated.has_listeners()


async def send_occupancy(topic: str, occupied: bool) -> None:
    """Send :data:`topic_occupied` or :data:`topic_vacated`; a receiver's error is logged."""
    signal = topic_occupied if occupied else topic_vacated
    for _receiver, response in await signal.asend_robust(sender="megaphone", topic=topic):
        if isinstance(response, Exception):
            logger.error("an occupancy receiver failed on %s", topic, exc_info=response)
