"""A session of the JSON protocol: one client of ``/ws/connect/``, transport-neutral.

A :class:`Session` takes the client's text frames (:meth:`Session.handle_text`), answers through
its :class:`~megaphone.server.connection.Connection` and keeps one :class:`Subscription` per
subscribed topic in the node's hub. It never touches a socket, so any transport can drive it.

Recovery without gap or duplicate: a subscription joins the hub *first* and buffers live
messages; then history is read and delivered; then buffered messages already covered by history
(offset <= the last one delivered) are dropped and the rest delivered, and the subscription goes
live. Live, it delivers only the next offset of its epoch: a duplicate is dropped; a gap (a message
lost by the bus, or offsets assigned out of order) is filled from history the same way, and if it
cannot be filled the client gets an ``unsubscribed`` frame with ``insufficient_state`` and
resubscribes from its position, which answers ``recovered: false`` if the gap is really lost.

Latest-value topics (``TOPICS`` option ``latest``): a subscribe that recovers nothing (no
``since``, or ``recovered: false``) sends the topic's latest message right after the reply (whose
``offset`` is then the one just before it), before any live one, the same way (subscribed
first, then the latest read from history, then the buffer), so the client has the current state
without an HTTP fetch. It needs the history right
(it discloses a message published before the subscription), and the history to still hold that
message (``history_ttl``): a topic whose latest message expired sends nothing before live ones.
A subscribe that recovers gets its missed messages as on any topic, the latest last.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, NoReturn

from megaphone.backends import BackendUnavailable, HistoryPage
from megaphone.conf import get_config, topic_options
from megaphone.core.decoding import InvalidText, strict_query
from megaphone.core.logs import get_logger
from megaphone.core.message import Message, raw_frame
from megaphone.core.ratelimit import TokenBucket
from megaphone.engine.node import Node
from megaphone.protocol.schema import (
    VERSION,
    Code,
    History,
    Ping,
    Position,
    Presence,
    ProtocolError,
    Publish,
    Request,
    Subscribe,
    Unsubscribe,
    error_frame,
    frame,
    history_reply,
    parse,
    parse_positions,
    presence_topic,
    reply_frame,
)
from megaphone.server.auth import TOKEN_SUBSCRIPTIONS
from megaphone.server.connection import Connection
from megaphone.server.hooks import (
    PublishRejected,
    presence_joined,
    presence_left,
    screen,
    send_presence,
    subscriptions_for,
)
from megaphone.server.permissions import (
    Action,
    aallowed,
    amay_read_history,
    amay_see_presence,
    amay_subscribe,
)

logger = get_logger(__name__)


async def read_since(
    node: Node, topic: str, offset: int, epoch: str, limit: int
) -> tuple[HistoryPage, bool]:
    """The first page (at most ``limit`` messages) of ``topic``'s history after ``offset``, and
    whether the history still holds every message after it in ``epoch``, at most
    ``RECOVERY_MAX_MESSAGES`` of them (an offset beyond the topic's latest: False)."""
    page = await node.history(topic, offset, limit)
    missed = page.offset - offset
    recovered = (
        page.epoch == epoch
        and page.complete
        and 0 <= missed <= get_config().RECOVERY_MAX_MESSAGES
        and (missed == 0 or (bool(page.messages) and page.messages[0].offset == offset + 1))
    )
    return page, recovered


class Subscription:
    """One topic of one session, as the hub sees it; see the module docstring."""

    __slots__ = (
        "buffer",
        "by_server",
        "epoch",
        "last",
        "may_publish",
        "session",
        "topic",
        "watches_join_leave",
    )

    def __init__(self, session: Session, topic: str) -> None:
        self.session = session
        self.topic = topic
        # Decided once per subscription (the policy may query the database), never per message:
        # whether it gets join/leave events, and whether it may publish (None: not asked yet).
        self.watches_join_leave = False
        self.may_publish: bool | None = None
        self.by_server = False  # subscribed by the server_subscriptions hook, not the client
        self.epoch = ""
        self.last = 0  # offset of the last message sent to the client
        # Live messages held back while history is read; None once live.
        self.buffer: list[Message] | None = []

    def deliver(self, message: Message) -> None:
        buffer = self.buffer
        if buffer is not None:
            buffer.append(message)
        elif message.offset == self.last + 1 and message.epoch == self.epoch:
            self.last = message.offset
            self.session.connection.deliver(message)
        elif message.offset <= self.last and message.epoch == self.epoch:
            pass  # a duplicate: already sent from history
        else:
            self.session.gap(self, message)

    def go_live(self) -> None:
        """Send what was buffered and is not a duplicate, then deliver live."""
        buffer, self.buffer = self.buffer or [], None
        for message in buffer:
            self.deliver(message)  # which buffers it if a gap switched back to buffering


class _PresenceListener:
    """Receives a session's join/leave events: their payload is the frame text, sent as is."""

    __slots__ = ("connection",)

    def __init__(self, connection: Connection) -> None:
        self.connection = connection

    def deliver(self, message: Message) -> None:
        self.connection.deliver(message, raw_frame)


class RateLimitIgnored(Exception):
    """The client went on subscribing or unsubscribing through its ``rate_limited`` errors: the
    transport closes its connection with 4429."""


class Session:
    def __init__(
        self,
        node: Node,
        connection: Connection,
        *,
        client: str,
        user: str | None = None,
        principal: Any = None,
        publish_limit: TokenBucket | None = None,
        subscribe_limit: TokenBucket | None = None,
    ) -> None:
        """``user`` is the name shown in presence; ``principal`` the user object the permission
        policy (:mod:`megaphone.server.permissions`) decides for (None or AnonymousUser: anonymous).
        ``subscribe_limit`` is taken by every subscribe and unsubscribe request; the requests it
        refuses are limited by a bucket of the same rate and burst, and past that the client is
        to be closed (:class:`RateLimitIgnored`)."""
        self.node = node
        self.principal = principal
        self.publish_limit = publish_limit
        self.subscribe_limit = subscribe_limit
        self._refusals = (
            None
            if subscribe_limit is None
            else TokenBucket(subscribe_limit.rate, subscribe_limit.burst, subscribe_limit.clock)
        )
        self.connection = connection
        self.client = client
        self.user = user
        self.subscriptions: dict[str, Subscription] = {}
        self._presence_listener = _PresenceListener(connection)
        self._info: dict[str, dict[str, Any] | None] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        # Topics whose presence_joined signal was sent and presence_left not yet.
        self._joined: set[str] = set()

    def hello(self) -> str:
        """The first frame the client gets."""
        return frame("connected", client=self.client, version=VERSION)

    def send(self, text: str) -> None:
        self.connection.send_text(text)

    async def handle_text(self, text: str) -> None:
        """Answer one client frame: a reply, or an ``error`` frame. Raises
        :class:`RateLimitIgnored` when the client must be closed for its subscribe rate."""
        request_id: int | str | None = None
        try:
            request = parse(text)
            request_id = request.id
            await self._handle(request)
        except ProtocolError as exc:
            self.send(error_frame(exc.id, exc.code, exc.message))
        except BackendUnavailable as exc:
            logger.error("backend unavailable for %s: %s", self.client, exc)
            self.send(error_frame(request_id, Code.BACKEND_UNAVAILABLE, "try again later"))

    def handle_bytes(self, data: bytes) -> None:
        self.send(
            error_frame(None, Code.BAD_REQUEST, "binary frames are not part of this protocol")
        )

    async def _may_publish(self, topic: str) -> bool:
        """The publish decision, asked once per subscription on a subscribed topic (and on
        every publish elsewhere): the policy may query the database."""
        subscription = self.subscriptions.get(topic)
        if subscription is None:
            return await aallowed(self.principal, "publish", topic)
        if subscription.may_publish is None:
            subscription.may_publish = await aallowed(self.principal, "publish", topic)
        return subscription.may_publish

    @staticmethod
    def _refuse(action: Action, request_id: Any) -> NoReturn:
        raise ProtocolError(Code.FORBIDDEN, f"not allowed to {action} on this topic", request_id)

    async def _handle(self, request: Request) -> None:
        if isinstance(request, (Subscribe, Unsubscribe)):
            self._limit_subscribes(request.id)
        if isinstance(request, Publish):
            await self._publish(request)
        elif isinstance(request, Subscribe):
            await self._subscribe(request)
        elif isinstance(request, Unsubscribe):
            if request.topic not in self.subscriptions:
                raise ProtocolError(Code.NOT_SUBSCRIBED, "not subscribed", request.id)
            await self._unsubscribe(request.topic)
            self.send(reply_frame(request.id, {"topic": request.topic}))
        elif isinstance(request, History):
            await self._history(request)
        elif isinstance(request, Presence):
            await self._presence(request)
        elif isinstance(request, Ping):
            self.send(frame("pong", id=request.id))

    def _limit_subscribes(self, request_id: int | str | None) -> None:
        """Take a token of the subscribe limit, or refuse the request with ``rate_limited``, or,
        once refusals are over their own limit, give up on the client."""
        if self.subscribe_limit is None or self.subscribe_limit.allow():
            return
        assert self._refusals is not None
        if not self._refusals.allow():
            raise RateLimitIgnored("subscribing and unsubscribing on through rate_limited errors")
        raise ProtocolError(Code.RATE_LIMITED, "subscribing or unsubscribing too fast", request_id)

    async def _publish(self, request: Publish) -> None:
        if self.publish_limit is not None and not self.publish_limit.allow():
            raise ProtocolError(Code.RATE_LIMITED, "publishing too fast", request.id)
        if not await self._may_publish(request.topic):
            self._refuse("publish", request.id)
        if not topic_options(request.topic).publish:
            raise ProtocolError(Code.FORBIDDEN, "clients may not publish here", request.id)
        try:
            payload, is_json = await screen(
                request.topic, request.payload, request.json, self.principal, "protocol"
            )
        except PublishRejected as exc:
            raise ProtocolError(exc.code, exc.message, request.id) from None
        message = await self.node.publish(
            request.topic, payload, json=is_json, msg_id=request.msg_id
        )
        result = {"topic": message.topic, "offset": message.offset, "epoch": message.epoch}
        self.send(reply_frame(request.id, result))

    async def _subscribe(self, request: Subscribe) -> None:
        topic = request.topic
        held = self.subscriptions.get(topic)
        if held is not None and held.by_server:
            # The server subscribed it at connect (and recovered it from the URL's ``since``):
            # the client asking for it too is told where it stands.
            result = {"topic": topic, "offset": held.last, "epoch": held.epoch, "server": True}
            self.send(reply_frame(request.id, result))
            return
        if held is not None:
            raise ProtocolError(Code.ALREADY_SUBSCRIBED, "already subscribed", request.id)
        principal = self.principal
        while True:  # until the decision is for the principal of the moment (see recheck)
            if not await amay_subscribe(principal, topic):
                self._refuse("subscribe", request.id)
            if principal is self.principal:
                break
            principal = self.principal
        if len(self.subscriptions) >= get_config().MAX_SUBSCRIPTIONS:
            raise ProtocolError(Code.TOO_MANY_SUBSCRIPTIONS, "too many subscriptions", request.id)
        await self._enter(
            topic, request.since, request.info, lambda result: reply_frame(request.id, result)
        )

    async def open_server_subscriptions(self, user: Any, scope: dict[str, Any]) -> None:
        """The server subscriptions of a connection opened with ``scope`` by ``user``
        (:data:`~megaphone.server.hooks.server_subscriptions`, and the topics its token names),
        recovered from the URL's ``since``; before any request of the client is handled. A bad
        ``since`` gets an error frame and the subscriptions start from now; a backend down, an
        error frame ``backend_unavailable``."""
        topics = await subscriptions_for(user, scope, scope.get(TOKEN_SUBSCRIPTIONS, ()))
        if not topics:
            return
        positions = None
        try:
            query = strict_query(scope.get("query_string", b"").decode("latin-1"))
            since = [value for key, value in query if key == "since"]
            positions = parse_positions(since[-1]) if since else None
        except InvalidText as exc:
            self.send(error_frame(None, Code.BAD_REQUEST, f"the URL's since: {exc}"))
        except ProtocolError as exc:
            self.send(error_frame(None, exc.code, exc.message))
        try:
            await self.subscribe_server(topics, positions)
        except BackendUnavailable as exc:
            logger.error("server subscriptions of %s not made: %s", self.client, exc)
            self.send(error_frame(None, Code.BACKEND_UNAVAILABLE, "try again later"))

    async def subscribe_server(
        self, topics: list[str], positions: dict[str, Position] | None = None
    ) -> None:
        """Subscribe the connection to ``topics`` without its asking (the
        :data:`~megaphone.server.hooks.server_subscriptions` hook), each announced by a
        ``subscribed`` frame, recovered from ``positions`` (the client's ``since``). A topic the
        policy refuses, or over ``MAX_SUBSCRIPTIONS``, is left out (logged)."""
        positions = positions or {}
        for topic in topics:
            if topic in self.subscriptions:
                continue
            if len(self.subscriptions) >= get_config().MAX_SUBSCRIPTIONS:
                logger.error(
                    "server subscriptions of %s over MAX_SUBSCRIPTIONS: %s left out",
                    self.client,
                    topic,
                )
                continue
            if not await amay_subscribe(self.principal, topic):
                logger.error(
                    "server subscription of %s to %s: the policy refuses it", self.client, topic
                )
                continue
            await self._enter(
                topic,
                positions.get(topic),
                None,
                lambda result: frame("subscribed", **result),
                by_server=True,
            )

    async def _enter(
        self,
        topic: str,
        since: Position | None,
        info: dict[str, Any] | None,
        answer: Callable[[dict[str, Any]], str],
        *,
        by_server: bool = False,
    ) -> None:
        """Subscribe to ``topic`` (the policy said yes), recover from ``since``, and send
        ``answer(result)`` before any message of it (see the module docstring)."""
        options = topic_options(topic)
        watches = options.presence and options.join_leave
        watches = watches and await amay_see_presence(self.principal, topic)
        reads_history = (since is not None or options.latest) and await amay_read_history(
            self.principal, topic
        )
        if topic in self.subscriptions:  # subscribed meanwhile, while the policy was asked
            raise ProtocolError(Code.ALREADY_SUBSCRIBED, "already subscribed")
        subscription = self.subscriptions[topic] = Subscription(self, topic)
        subscription.watches_join_leave = watches
        subscription.by_server = by_server
        self._info[topic] = info
        try:
            if watches:
                await self.node.subscribe(presence_topic(topic), self._presence_listener)
            await self.node.subscribe(topic, subscription)
            if since is not None and not reads_history:
                # Recovery would disclose the history: the client starts from now, and is told
                # plainly that nothing was recovered.
                page, recovered = await self.node.history(topic, 0, 0), False
            elif since is None:
                page = await self.node.history(topic, 0, 0)
                recovered = None
            else:
                page, recovered = await self._read_since(topic, since.offset, since.epoch)
            latest = None
            if options.latest and reads_history and not recovered and page.offset > 0:
                latest, held = await self._read_since(topic, page.offset - 1, page.epoch)
                latest = latest if held else None
        except BaseException:
            await self._unsubscribe(topic, leave=False)
            raise
        subscription.epoch = page.epoch
        subscription.last = since.offset if recovered and since else page.offset
        result: dict[str, Any] = {"topic": topic, "offset": page.offset, "epoch": page.epoch}
        if recovered is not None:
            result["recovered"] = recovered
            result["missed"] = page.offset - subscription.last
        if latest is not None:  # sent first: the latest message, then what came after it
            # The client's position is just before it, so a client that takes the reply's
            # offset as its own (the JS and Python clients do) keeps the latest, not a duplicate.
            subscription.last = result["offset"] = page.offset - 1
        self.send(answer(result))
        if recovered:
            self._spawn(self._catch_up(subscription, page))
        elif latest is not None:
            self._spawn(self._catch_up(subscription, latest))
        else:
            subscription.go_live()
        if options.presence:  # after the reply: the client's own join event follows it
            try:
                await self._join(topic, info, options.join_leave)
            except BackendUnavailable as exc:
                logger.error("could not add %s to presence on %s: %s", self.client, topic, exc)

    async def _read_since(self, topic: str, offset: int, epoch: str) -> tuple[HistoryPage, bool]:
        return await read_since(self.node, topic, offset, epoch, self._page_size())

    def _page_size(self) -> int:
        """Messages read from history at once while catching up: half an outbox."""
        return max(1, self.connection.outbox.max_messages // 2)

    def _spawn(self, coroutine: Any) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def gap(self, subscription: Subscription, message: Message) -> None:
        """A live message does not follow the last one sent: fill the gap from history."""
        subscription.buffer = [message]
        self._spawn(self._fill(subscription))

    async def _fill(self, subscription: Subscription) -> None:
        try:
            page, filled = await self._read_since(
                subscription.topic, subscription.last, subscription.epoch
            )
        except BackendUnavailable:
            page, filled = None, False
        if filled:
            assert page is not None
            await self._catch_up(subscription, page)
        else:
            await self._lost(subscription)

    async def _catch_up(self, subscription: Subscription, page: HistoryPage) -> None:
        """Send ``page`` (the history right after ``subscription.last``), then the rest of the
        topic's history a page at a time, then go live.

        Paced by the client: a frame is queued only while the outbox is at most half full, else
        once the client has taken most of it, so a catch-up of any length never crosses the
        outbox bound that closes slow consumers. Live messages buffered meanwhile are all in
        history too, so the buffer is emptied before each read. If history lost messages on the
        way (trimmed by a client slower than the publishers), the client is told as for a gap
        that cannot be filled (:meth:`_lost`).
        """
        topic, outbox = subscription.topic, self.connection.outbox
        while self._holds(subscription):
            for message in page.messages:
                if (
                    outbox.pending_bytes > outbox.max_bytes // 2
                    or len(outbox) > outbox.max_messages // 2
                ):
                    await self._drained()
                    if not self._holds(subscription):
                        return
                subscription.last = message.offset
                self.connection.deliver(message)
            if subscription.last >= page.offset:
                subscription.go_live()
                return
            subscription.buffer = []
            try:
                page = await self.node.history(topic, subscription.last, self._page_size())
            except BackendUnavailable:
                break
            if not (
                page.epoch == subscription.epoch
                and page.complete
                and page.messages
                and page.messages[0].offset == subscription.last + 1
            ):
                break
        await self._lost(subscription)

    def _holds(self, subscription: Subscription) -> bool:
        """Whether ``subscription`` is still one of this open session's."""
        return not self._closed and self.subscriptions.get(subscription.topic) is subscription

    async def _drained(self) -> None:
        """Return once the outbox is at most a quarter full (or closed): woken by the connection
        when its writer takes the queue, never by a timer."""
        outbox = self.connection.outbox
        await self.connection.drained(outbox.max_messages // 4, outbox.max_bytes // 4)

    async def _lost(self, subscription: Subscription) -> None:
        """Messages after ``subscription.last`` cannot be sent: unsubscribe the client with
        ``insufficient_state``; it resubscribes from its position and gets ``recovered: false``."""
        topic = subscription.topic
        if not self._holds(subscription):
            return
        logger.warning("%s lost its place on %s: asking it to resubscribe", self.client, topic)
        await self._unsubscribe(topic, leave=False)
        self.send(
            frame(
                "unsubscribed",
                topic=topic,
                code=Code.INSUFFICIENT_STATE,
                offset=subscription.last,
                epoch=subscription.epoch,
            )
        )

    async def end(self, topic: str, code: str) -> None:
        """The server ends the subscription to ``topic`` (an order, a re-check): the client gets
        ``unsubscribed`` with ``code``, and no message of the topic after it."""
        subscription = self.subscriptions.get(topic)
        if subscription is None or self._closed:
            return
        # Out of the hub before the first await: nothing of the topic is queued after this.
        await self._unsubscribe(topic)
        self.send(
            frame(
                "unsubscribed",
                topic=topic,
                code=code,
                offset=subscription.last,
                epoch=subscription.epoch,
            )
        )

    async def recheck(self, principal: Any) -> None:
        """Decide for ``principal`` from now on, and ask the policy again about every
        subscription: those it refuses end with ``revoked``; join/leave events stop where the
        presence right went; the publish right is asked again at the next publish."""
        self.principal = principal
        for topic, subscription in list(self.subscriptions.items()):
            if not await amay_subscribe(principal, topic):
                if self.subscriptions.get(topic) is subscription:
                    await self.end(topic, Code.REVOKED)
                continue
            subscription.may_publish = None
            if subscription.watches_join_leave and not await amay_see_presence(principal, topic):
                subscription.watches_join_leave = False
                await self.node.unsubscribe(presence_topic(topic), self._presence_listener)

    async def _join(self, topic: str, info: dict[str, Any] | None, announce: bool) -> None:
        entry: dict[str, object] = {"client": self.client, "user": self.user, "info": info}
        await self.node.presence_add(topic, self.client, entry)
        if announce:
            self.node.join_leave.announce("join", topic, entry)
        self._joined.add(topic)
        await send_presence(presence_joined, topic, self.client, self.principal, info)

    async def _unsubscribe(self, topic: str, *, leave: bool = True) -> None:
        subscription = self.subscriptions.pop(topic, None)
        info = self._info.pop(topic, None)
        if subscription is None:
            return
        options = topic_options(topic)
        await self.node.unsubscribe(topic, subscription)
        if subscription.watches_join_leave:
            await self.node.unsubscribe(presence_topic(topic), self._presence_listener)
        if options.presence:
            try:
                await self.node.presence_remove(topic, self.client)
                if leave and options.join_leave:
                    entry = {"client": self.client, "user": self.user, "info": info}
                    self.node.join_leave.announce("leave", topic, entry)
                if topic in self._joined:
                    self._joined.discard(topic)
                    await send_presence(presence_left, topic, self.client, self.principal, info)
            except BackendUnavailable as exc:
                logger.error("could not remove %s from presence on %s: %s", self.client, topic, exc)

    async def _history(self, request: History) -> None:
        if not await amay_read_history(self.principal, request.topic):
            self._refuse("history", request.id)
        page = await self.node.history(request.topic, request.since, request.limit)
        complete = page.complete
        if request.epoch is not None and request.epoch != page.epoch:
            # The client's offsets belong to a lost history: give it the current one from its start.
            page = await self.node.history(request.topic, 0, request.limit)
            complete = False
        result = {
            "topic": request.topic,
            "offset": page.offset,
            "epoch": page.epoch,
            "complete": complete,
        }
        self.send(history_reply(request.id, result, page.messages))

    async def _presence(self, request: Presence) -> None:
        if not await amay_see_presence(self.principal, request.topic):
            self._refuse("presence", request.id)
        if not topic_options(request.topic).presence:
            raise ProtocolError(Code.FORBIDDEN, "presence is off on this topic", request.id)
        entries = await self.node.presence(request.topic)
        clients = sorted(entries.values(), key=lambda entry: str(entry.get("client")))
        result = {"topic": request.topic, "count": len(clients), "clients": clients}
        self.send(reply_frame(request.id, result))

    async def close(self) -> None:
        """The connection is gone: leave every topic (presence entries and leave events too)."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        for topic in list(self.subscriptions):
            await self._unsubscribe(topic)
