"""Channels consumers: the ASGI transport. Runs under any ASGI server.

:class:`BroadcastConsumer` is the seed's endpoint done right: every frame a client sends reaches
every client of the topic, the sender included, as the same text or the same bytes, in the order
the backend gave them. :class:`ProtocolConsumer` is the multiplexed endpoint speaking the JSON
protocol of ``docs/protocol.md`` (the logic lives in :mod:`megaphone.server.session`). Neither uses
a
channel layer: messages go through the node's hub, which encodes each one once and queues it in
each connection's bounded outbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from typing import Any

from channels.consumer import get_handler_name
from channels.exceptions import StopConsumer
from channels.generic.websocket import AsyncWebsocketConsumer

from megaphone.backends import BackendUnavailable
from megaphone.conf import Config, get_config, topic_options
from megaphone.core import metrics
from megaphone.core.closecodes import CloseCode
from megaphone.core.decoding import InvalidText, utf8_size
from megaphone.core.frames import frame_writer
from megaphone.core.logs import get_logger, log_refusal
from megaphone.core.message import Encoder, Message, raw_frame
from megaphone.core.ratelimit import TokenBucket
from megaphone.core.topics import InvalidTopic, validate_topic
from megaphone.engine.node import Node, get_node
from megaphone.engine.publishing import mark_serving
from megaphone.protocol.schema import (
    message_event,
)
from megaphone.server.auth import (
    TOKEN_EXPIRES,
    active_user,
    user_control_topic,
    user_name,
)
from megaphone.server.connection import Connection
from megaphone.server.control import Order, decode_order
from megaphone.server.hooks import PublishRejected, screen
from megaphone.server.permissions import aallowed, amay_subscribe
from megaphone.server.session import RateLimitIgnored, Session

logger = get_logger(__name__)

#: The topic of ``/ws/broadcast/``.
DEFAULT_TOPIC = "broadcast"
#: Events a consumer handles (when they are already there) before it yields to the event loop.
EVENTS_PER_TURN = 16
#: Publishes of one raw-endpoint client that may wait for a pipelining backend at once.
MAX_PUBLISHING = 256
#: How long a close frame may wait for a client that stopped reading before we drop the client.
CLOSE_TIMEOUT = 5.0


class _DirectConsumer(AsyncWebsocketConsumer):
    """Channels' consumer, minus its channel layer and its task per received event.

    Channels' ``AsyncConsumer.__call__`` runs each ``receive()`` in a new task and waits on it
    with ``asyncio.wait``, so that it can listen to a channel layer at the same time. These
    consumers never join a channel layer, even if the project configures one (the hub does the
    fan-out), so they await ``receive()`` directly: events are dispatched one at a time, in the
    order the server delivers them, in the consumer's own task, as before. The consumer yields
    to the event loop every :data:`EVENTS_PER_TURN` events, so that a client sending a flood
    never holds the loop for long: its own writer and every other connection run in between.
    Handling a few events per turn lets a burst from one client fan out within one turn, so
    each subscriber gets it in one write (see :mod:`.connection`).
    """

    channel_layer = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.base_send = send
        dispatch = self.dispatch
        handled = 0
        try:
            while True:
                await dispatch(await receive())
                handled += 1
                if handled == EVENTS_PER_TURN:
                    handled = 0
                    await asyncio.sleep(0)
        except StopConsumer:
            pass


class _Endpoint(_DirectConsumer):
    """What both endpoints share: the connection and its outbox, the size check, closing.

    **A close is final.** Every close the server decides (1009, 4429, 4403, 4408, 4401, 1013)
    goes through :meth:`_close_with` (from the consumer's task) or :meth:`_decide_close` (from
    anywhere else), which record the decision at once: from then on nothing the client sent is
    handled (:meth:`dispatch` drops its frames, even those already received), and a second
    decision, whatever its code, does nothing: one close frame is sent, once. A frame being
    handled when the decision comes is finished first, so every frame handled is answered before
    the close frame (unless the outbox overflowed).
    """

    node: Node
    max_message_size: int
    publish_limit: TokenBucket
    connection: Connection | None = None
    #: The close the server decided on (its code), or None while the connection is open.
    closing_code: int | None = None
    _in_frame = False  # a client frame is being handled
    _frame_handled: asyncio.Event | None = None  # set after each frame, once a close waits
    _closing: asyncio.Task[None] | None = None
    _main_task: asyncio.Task[object] | None = None
    _token_timer: asyncio.TimerHandle | None = None
    _control_watch: _ControlWatch | None = None
    _orders: asyncio.Task[None] | None = None  # the last order of the control topic
    _released = False
    user: Any = None

    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Any:
        """Channels' ``as_asgi``; building an endpoint's ASGI application marks this process as
        one that serves clients (:func:`megaphone.engine.publishing.mark_serving`), however the
        project
        routes it (``megaphone.asgi.application()`` or a ``ProtocolTypeRouter`` of its own)."""
        mark_serving()
        return super().as_asgi(**initkwargs)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """Channels' consumer loop, with the guarantee that everything the connection joined is
        left however it ends: a normal disconnect, or a cancellation (see :meth:`_close`)."""
        self._main_task = asyncio.current_task()
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self.release(CloseCode.ABNORMAL)

    async def release(self, code: int) -> None:
        """Leave the topics and the user's control topic; idempotent."""
        if self._released:
            return
        self._released = True
        if self._token_timer is not None:
            self._token_timer.cancel()
        watch, self._control_watch = self._control_watch, None
        if self._orders is not None:
            self._orders.cancel()
        if watch is not None:
            await self.node.unsubscribe(watch.topic, watch)
        if self.connection is not None:
            logger.info("closed %s: code %d", self.scope["path"], code)
        await self.disconnect(code)

    async def dispatch(self, message: dict[str, Any]) -> None:
        """Channels' dispatch, minus its thread-pool hop per frame to close stale database
        connections: these consumers never use the ORM outside ``database_sync_to_async``, which
        closes them itself. That hop cost more than the broadcast of a frame to 1,000 clients."""
        handler = getattr(self, get_handler_name(message), None)
        if handler is None:
            raise ValueError(f"no handler for message type {message['type']}")
        if message["type"] != "websocket.receive":
            await handler(message)
        elif self.closing_code is None:  # once closing, what the client sends is void
            self._in_frame = True
            try:
                await handler(message)
            finally:
                self._in_frame = False
                if self._frame_handled is not None:
                    self._frame_handled.set()

    async def _refuse(self, reason: str, label: str) -> None:
        """Refuse the handshake (HTTP 403), logging why and counting it by ``label``."""
        log_refusal(logger, self.scope, reason)
        metrics.REFUSALS.labels(label).inc()
        await self.close()

    async def _setup(self, encoder: Encoder) -> Connection | None:
        """Read the settings, find the node, build the connection (not started yet); None,
        after refusing the handshake, when the backend cannot be reached."""
        config = get_config()
        self.max_message_size = config.MAX_MESSAGE_SIZE
        self.publish_limit = TokenBucket(config.PUBLISH_RATE, config.PUBLISH_BURST)
        try:
            return await self._join_node(encoder, config)
        except BackendUnavailable as exc:
            await self._refuse(f"backend: {exc}", "backend")
            return None

    async def _join_node(self, encoder: Encoder, config: Config) -> Connection:
        self.node = await get_node()
        self.user = self.scope.get("user")
        expires = self.scope.get(TOKEN_EXPIRES)
        if expires is not None:  # a token-authenticated connection ends with its token
            self._token_timer = asyncio.get_running_loop().call_later(
                max(0.0, expires - time.time()), self._token_expired
            )
        if getattr(self.user, "is_authenticated", False):  # orders: logout, disconnect...
            watch = _ControlWatch(user_control_topic(self.user.pk), self)
            await self.node.subscribe(watch.topic, watch)
            self._control_watch = watch
        return Connection(
            self.base_send,
            encoder,
            self._slow,
            max_messages=config.OUTBOX_MAX_MESSAGES,
            max_bytes=config.OUTBOX_MAX_BYTES,
            frame_writer=frame_writer(self.scope),
        )

    async def _payload(self, text_data: str | None, bytes_data: bytes | None) -> str | bytes | None:
        """The frame's payload, or None after closing the client with 1009 if it is too big, or
        with 1007 if its text is not valid Unicode (a server that decodes UTF-8 strictly, as
        uvicorn does, closes with 1007 before this; other ASGI servers may hand over anything)."""
        payload: str | bytes
        if text_data is not None:
            try:
                payload, size = text_data, utf8_size(text_data)
            except InvalidText as exc:
                logger.info("closing %s: a text frame %s", self.scope["path"], exc)
                await self._close_with(CloseCode.INVALID_PAYLOAD)
                return None
        else:
            payload = bytes_data if bytes_data is not None else b""
            size = len(payload)
        if size > self.max_message_size:
            logger.info("closing %s: message of %d bytes over the limit", self.scope["path"], size)
            await self._close_with(CloseCode.MESSAGE_TOO_BIG)
            return None
        return payload

    async def websocket_disconnect(self, message: dict[str, Any]) -> None:
        """Channels' version, minus its channel-layer groups and its thread hop (see dispatch)."""
        await self.release(message["code"])
        raise StopConsumer()

    def _token_expired(self) -> None:
        if self._decide_close(CloseCode.UNAUTHORIZED):
            logger.info("closing %s: its connection token expired", self.scope["path"])

    def obey(self, order: Order) -> None:
        """An order of the user's control topic (:mod:`megaphone.server.control`): a disconnect
        closes at once; the others run in order, one after the other, in the background."""
        if order.op == "disconnect":
            if self._decide_close(order.code):
                logger.info(
                    "closing %s: its user was disconnected (%d)", self.scope["path"], order.code
                )
            return
        previous = self._orders
        self._orders = asyncio.get_running_loop().create_task(self._obey_after(previous, order))

    async def _obey_after(self, previous: asyncio.Task[None] | None, order: Order) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        if self.closing_code is not None or self._released:
            return
        try:
            if order.op == "unsubscribe":
                await self.unsubscribed_by_server(order.topic, order.reason)
            else:
                user = await active_user(str(self.user.pk))
                if user is None:
                    if self._decide_close(CloseCode.UNAUTHORIZED):
                        logger.info("closing %s: its user is gone or inactive", self.scope["path"])
                    return
                self.user = user
                await self.recheck(user)
        except BackendUnavailable as exc:
            logger.error("order %s on %s not done: %s", order.op, self.scope["path"], exc)
        except Exception:  # a bug, or the database down: as loud as can be, the others go on
            logger.exception("order %s on %s failed", order.op, self.scope["path"])

    async def unsubscribed_by_server(self, topic: str, reason: str) -> None:
        """End the connection's subscription to ``topic``, with ``reason``."""
        raise NotImplementedError

    async def recheck(self, user: Any) -> None:
        """Ask the policy again, for ``user`` (just reloaded), about every subscription."""
        raise NotImplementedError

    def _slow(self) -> None:
        """Called by the outbox, once, when it overflows; it already drops further frames."""
        if self._decide_close(CloseCode.SLOW_CONSUMER):
            logger.warning("closing a slow consumer on %s: outbox full", self.scope["path"])

    def _decide_close(self, code: int) -> bool:
        """Close with ``code`` in the background, unless a close was decided already; True if
        this call decided it. For callers outside the consumer's own task (timers, the hub, the
        outbox, a publish's callback)."""
        if self.closing_code is not None or self._released:
            return False
        self.closing_code = code
        self._closing = asyncio.get_running_loop().create_task(self._close_after_frame(code))
        return True

    async def _close_after_frame(self, code: int) -> None:
        """:meth:`_close`, once the frame being handled (if any) is: its answer goes out first.
        A frame taking more than :data:`CLOSE_TIMEOUT` seconds is not waited for."""
        if self._in_frame:
            self._frame_handled = asyncio.Event()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._frame_handled.wait(), CLOSE_TIMEOUT)
        await self._close(code)

    async def _close_with(self, code: int) -> None:
        """Close with ``code`` now, from the consumer's own task (it reads no more frames
        meanwhile), unless a close was decided already."""
        if self.closing_code is None and not self._released:
            self.closing_code = code
            await self._close(code)

    async def _close(self, code: int) -> None:
        """Send what was delivered before the close (unless the outbox overflowed: a slow
        consumer's frames are dropped), then close the socket with ``code``.

        A client that stopped reading cannot take its frames or the close frame: after
        :data:`CLOSE_TIMEOUT` seconds for each, the consumer is cancelled and the server drops
        the connection.
        """
        metrics.CLOSES.labels(str(code)).inc()
        if self.connection is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.connection.flush(), CLOSE_TIMEOUT)
            await self.connection.close()
        if self._released:
            return  # the client is gone already: there is no one to send a close frame to
        try:
            await asyncio.wait_for(self._send_close(code), CLOSE_TIMEOUT)
        except OSError:  # it left while we were flushing: nothing more to say to it
            pass
        except TimeoutError:
            logger.warning("client on %s did not take its close frame", self.scope["path"])
            if self._main_task is not None:
                self._main_task.cancel()

    async def _send_close(self, code: int) -> None:
        """The ASGI ``websocket.close`` event, with ``code`` as a plain int (the ASGI spec's type;
        daphne refuses an IntEnum). daphne can send no RFC 6455 code but 1000 from the application
        (it raises for 1009, 1011, 1013...): there the client gets 1000, with one log line."""
        try:
            await self.close(int(code))
        except Exception:
            if not 1000 < code < 3000:
                raise
            logger.info("the ASGI server cannot send close code %d: closing with 1000", code)
            await self.close(1000)


class _ControlWatch:
    """The hub subscriber of an authenticated connection on its user's control topic: each
    message there is an order (:mod:`megaphone.server.control`) the connection obeys."""

    __slots__ = ("endpoint", "topic")

    def __init__(self, topic: str, endpoint: _Endpoint) -> None:
        self.topic = topic
        self.endpoint = endpoint

    def deliver(self, message: Message) -> None:
        order = decode_order(message.payload)
        if order is not None:
            self.endpoint.obey(order)


class BroadcastConsumer(_Endpoint):
    """``/ws/broadcast/`` (topic ``broadcast``) and ``/ws/broadcast/<topic>/``.

    Close codes: 1009 for a message over ``MAX_MESSAGE_SIZE``, 4408 for a client whose outbox
    overflowed, 4429 for publishing faster than ``PUBLISH_RATE``/``PUBLISH_BURST`` allow, 1013
    when the backend is unavailable, 4403 after a message on a topic where clients may not
    publish. A handshake for an invalid topic name is refused (HTTP 403) and the
    reason is logged.
    """

    topic: str

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Publishes handed to a pipelining backend and not answered yet (see receive); a set
        # once the first is (not one per connection that never publishes).
        self._publishing: set[asyncio.Task[Message]] | None = None
        self._may_publish: bool | None = None

    async def connect(self) -> None:
        kwargs = self.scope.get("url_route", {}).get("kwargs", {})
        try:
            self.topic = validate_topic(kwargs.get("topic") or DEFAULT_TOPIC)
        except InvalidTopic as exc:
            await self._refuse(str(exc), "invalid_topic")
            return
        connection = await self._setup(raw_frame)
        if connection is None:
            return
        if not await amay_subscribe(self.user, self.topic):
            await self._refuse("may not subscribe", "forbidden")
            return
        try:
            await self.node.subscribe(self.topic, connection)
        except BackendUnavailable as exc:
            await self._refuse(f"backend: {exc}", "backend")
            return
        self.connection = connection
        await self.accept()
        connection.start()

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        payload = await self._payload(text_data, bytes_data)
        if payload is None:
            return
        if not self.publish_limit.allow():
            logger.warning("closing a client on %s: publish rate over the limit", self.topic)
            await self._close_with(CloseCode.RATE_LIMITED)
            return
        options = topic_options(self.topic)
        if self._may_publish is None:  # asked once per connection: it may query the database
            self._may_publish = await aallowed(self.user, "publish", self.topic)
        if not (options.publish and self._may_publish):
            logger.info("closing %s: clients may not publish on %s", self.scope["path"], self.topic)
            await self._close_with(CloseCode.FORBIDDEN)
            return
        try:
            payload, is_json = await screen(self.topic, payload, False, self.user, "raw")
        except PublishRejected as exc:
            logger.info(
                "closing %s: a client_publish hook refused: %s", self.scope["path"], exc.code
            )
            await self._close_with(CloseCode.FORBIDDEN)
            return
        if self.node.backend.pipelines_publishes and not options.durable:
            # Without waiting for the answer: the client's next frames are published behind it,
            # in order, so a burst costs one round trip to the backend, not one per frame, and
            # reaches the subscribers together (one write each). At most MAX_PUBLISHING wait at
            # once, whatever the rate limit: a client cannot queue more while the backend is slow.
            if self._publishing is None:
                self._publishing = set()
            elif len(self._publishing) >= MAX_PUBLISHING:
                await asyncio.wait(self._publishing, return_when=asyncio.FIRST_COMPLETED)
            task = asyncio.ensure_future(self.node.publish(self.topic, payload, json=is_json))
            self._publishing.add(task)
            task.add_done_callback(self._published)
            return
        try:
            await self.node.publish(self.topic, payload, json=is_json)
        except BackendUnavailable as exc:
            self._publish_failed(exc)

    async def unsubscribed_by_server(self, topic: str, reason: str) -> None:
        """A raw client has no ``unsubscribed`` frame: one on that topic is closed with 4403."""
        if topic == self.topic and self._decide_close(CloseCode.FORBIDDEN):
            logger.info("closing %s: unsubscribed by the server (%s)", self.scope["path"], reason)

    async def recheck(self, user: Any) -> None:
        self._may_publish = None  # asked again at the next message
        if not await amay_subscribe(user, self.topic) and self._decide_close(CloseCode.FORBIDDEN):
            logger.info(
                "closing %s: its user may no longer subscribe (revoked)", self.scope["path"]
            )

    def _published(self, task: asyncio.Task[Message]) -> None:
        if self._publishing is not None:
            self._publishing.discard(task)
        error = None if task.cancelled() else task.exception()
        if isinstance(error, BackendUnavailable):
            self._publish_failed(error)
        elif error is not None:  # a bug: as loud as if the consumer had awaited it
            logger.error("publish on %s failed", self.topic, exc_info=error)

    def _publish_failed(self, error: BackendUnavailable) -> None:
        """The backend refused a message: close the client with 1013 (once); it may retry."""
        if self._decide_close(CloseCode.TRY_AGAIN_LATER):
            logger.error("publish on %s failed, closing: %s", self.topic, error)

    async def disconnect(self, code: int) -> None:
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.close()
            await self.node.unsubscribe(self.topic, connection)


class ProtocolConsumer(_Endpoint):
    """``/ws/connect/``: the multiplexed JSON protocol (``docs/protocol.md``).

    Every request gets a reply or an ``error`` frame with a stable code; the connection stays
    open (a publish over ``PUBLISH_RATE``/``PUBLISH_BURST``, or a subscribe or unsubscribe over
    ``SUBSCRIBE_RATE``/``SUBSCRIBE_BURST``, gets ``rate_limited``). Close codes: 1009 for a frame
    over ``MAX_MESSAGE_SIZE``, 4408 for a slow consumer, 4429 for a client that went on
    subscribing or unsubscribing through its ``rate_limited`` errors (more of them than
    ``SUBSCRIBE_RATE``/``SUBSCRIBE_BURST`` allow). A handshake while the backend is unreachable
    is refused (HTTP 403, counted as ``backend``).
    """

    session: Session | None = None

    async def connect(self) -> None:
        connection = await self._setup(message_event)
        if connection is None:
            return
        try:
            await self.node.reachable()
        except BackendUnavailable as exc:
            await self._refuse(f"backend: {exc}", "backend")
            return
        self.connection = connection
        config = get_config()
        self.session = Session(
            self.node,
            connection,
            client=secrets.token_urlsafe(9),
            user=user_name(self.scope),
            principal=self.user,
            publish_limit=self.publish_limit,
            subscribe_limit=TokenBucket(config.SUBSCRIBE_RATE, config.SUBSCRIBE_BURST),
        )
        await self.accept()
        self.session.send(self.session.hello())
        connection.start()
        await self.session.open_server_subscriptions(self.user, self.scope)

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        payload = await self._payload(text_data, bytes_data)
        if payload is None or self.session is None:
            return
        if isinstance(payload, bytes):
            self.session.handle_bytes(payload)
            return
        try:
            await self.session.handle_text(payload)
        except RateLimitIgnored as exc:
            if self.closing_code is None:  # not if a close was decided while this frame ran
                logger.warning("closing a client on %s: %s", self.scope["path"], exc)
            await self._close_with(CloseCode.RATE_LIMITED)

    async def unsubscribed_by_server(self, topic: str, reason: str) -> None:
        if self.session is not None:
            await self.session.end(topic, reason)

    async def recheck(self, user: Any) -> None:
        if self.session is not None:
            await self.session.recheck(user)

    async def disconnect(self, code: int) -> None:
        session, self.session = self.session, None
        connection, self.connection = self.connection, None
        if connection is not None:
            await connection.close()
        if session is not None:
            await session.close()


#: Megaphone's WebSocket endpoints: a route (a regular expression over the path without its
#: leading slash, as Channels' ``URLRouter`` matches it) and its consumer.
#: :data:`megaphone.routing.websocket_urlpatterns` routes them under ASGI, and the native
#: transport (:mod:`megaphone.server.native`) serves the same ones.
ENDPOINTS: tuple[tuple[str, type[_Endpoint]], ...] = (
    (r"^ws/broadcast/$", BroadcastConsumer),
    (r"^ws/broadcast/(?P<topic>[^/]+)/$", BroadcastConsumer),
    (r"^ws/connect/$", ProtocolConsumer),
)
