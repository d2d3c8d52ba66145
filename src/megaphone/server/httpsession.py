"""The JSON protocol over plain HTTP: the transport for networks that refuse WebSocket upgrades.

``GET /sse/connect/`` opens a session of the protocol (the same :class:`~.session.Session` that
``/ws/connect/`` runs) whose frames come down as a ``text/event-stream``: each frame is one event
whose ``data`` is the frame's JSON, exactly the text a WebSocket client would get. The first event
is ``event: session`` with the session id as its data, then the ``connected`` frame. The client
sends its frames (subscribe, unsubscribe, publish, history, presence, ping) as the body of
``POST /sse/connect/<session id>/``, one frame per request (``Content-Type`` ``application/json``
or ``text/plain``); the answer is ``202`` and the frame's reply comes on the stream, like a
WebSocket reply. A POST never waits for the reply: it waits only until the frame is in the
backend, so frames sent one POST after another are handled in that order.

**Any worker.** The worker that gets a POST need not be the one holding the stream (no sticky
sessions): it publishes the frame on the session's internal topic ``$session:<id>`` (no history,
out of clients' reach), which the stream's worker listens to; it hands each frame, in order, to
the session. A POST for a session that no longer streams is lost (202 all the same); a client
that reconnects opens a new session and resubscribes with its positions (``since``), as after a
WebSocket reconnect: it gets exactly what it missed.

**Whose session.** The id is ``<random>.<mac>``: 128 random bits and an HMAC (``SECRET_KEY``) of
them with the identity the stream was opened with (the user's pk, or anonymous). A POST whose
own identity (session cookie or ``?token=``) does not give the same MAC is refused with 403, so
a user can never act on another's session, even knowing its id; an anonymous session's id is a
bearer secret. The id is only ever sent on the stream, which a foreign page cannot read, so it is
also the CSRF token of the POSTs; and the guards refuse a POST whose browser ``Origin`` is not
allowed (403), as they refuse such a handshake.

**Limits.** A body over ``MAX_MESSAGE_SIZE`` gets 413 and the stream ends with close code 1009
(as a WebSocket closes over such a frame); more POSTs per session and worker than
``PUBLISH_RATE + SUBSCRIBE_RATE`` a second (burst ``PUBLISH_BURST + SUBSCRIBE_BURST``; no
limit when either rate is 0) get 429
with ``Retry-After``; the session applies the protocol's own rate limits on top, as over a
WebSocket. The stream has the WebSocket connection's bounded outbox: a client that cannot keep up
gets ``event: close`` with 4408 and the stream ends. **Ending.** Every end the server decides is
an ``event: close`` whose data is ``{"code": <close code>}`` (the WebSocket close codes of
``docs/protocol.md``: 4408, 4429, 4401 for an expired token or a logout, 1009, 1012 on
shutdown, this one after a ``retry:`` hint), then the end of the response.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import time
from collections import OrderedDict
from typing import Any

from django.utils.crypto import constant_time_compare, salted_hmac

from megaphone.backends import BackendUnavailable
from megaphone.conf import get_config
from megaphone.core import metrics
from megaphone.core.closecodes import CloseCode
from megaphone.core.decoding import InvalidText
from megaphone.core.logs import get_logger, log_refusal
from megaphone.core.message import Message
from megaphone.core.ratelimit import TokenBucket
from megaphone.engine.node import get_node
from megaphone.engine.publishing import mark_serving
from megaphone.protocol.schema import message_event
from megaphone.server.auth import TOKEN_EXPIRES, active_user, user_control_topic, user_name
from megaphone.server.connection import Connection
from megaphone.server.control import Order, decode_order
from megaphone.server.session import RateLimitIgnored, Session
from megaphone.server.sse import (
    Receive,
    Scope,
    Send,
    backend_unavailable,
    heartbeats_to,
    register_stream,
    respond,
    stream_headers,
    until_disconnect,
)

logger = get_logger(__name__)

#: ``/sse/connect/`` (GET: the stream) and ``/sse/connect/<session id>/`` (POST: a frame).
PATH = re.compile(r"^/sse/connect/(?:(?P<session>[^/]+)/)?$")
_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{22}\.[0-9a-f]{32}")
_SALT = "megaphone.httpsession"
#: Seconds a stream that ends may take to send what is queued and its close event.
CLOSE_TIMEOUT = 5.0
#: Sessions whose POST rate a worker remembers (least recently seen forgotten first).
MAX_RATE_ENTRIES = 10_000


def session_topic(session_id: str) -> str:
    """The internal topic the stream's worker listens to for the session's frames."""
    return f"$session:{session_id}"


def _identity(scope: Scope) -> str:
    user = scope.get("user")
    if getattr(user, "is_authenticated", False):
        assert user is not None
        return f"user:{user.pk}"
    return "anonymous"


def _mac(nonce: str, scope: Scope) -> str:
    return salted_hmac(_SALT, f"{nonce}|{_identity(scope)}", algorithm="sha256").hexdigest()[:32]


def new_session_id(scope: Scope) -> str:
    """An unguessable id bound to the identity of ``scope`` (see the module docstring)."""
    nonce = secrets.token_urlsafe(16)
    return f"{nonce}.{_mac(nonce, scope)}"


def owns(session_id: str, scope: Scope) -> bool:
    """Whether the identity of ``scope`` is the one ``session_id`` was issued to."""
    if not _SESSION_ID.fullmatch(session_id):
        return False
    nonce, _, mac = session_id.partition(".")
    return constant_time_compare(mac, _mac(nonce, scope))


def _sse_frame(text: str) -> bytes:
    """A frame as one event: frames are single-line JSON, so one ``data:`` line."""
    return b"data: " + text.encode() + b"\n\n"


def close_event(code: int) -> bytes:
    return b"event: close\ndata: " + json.dumps({"code": int(code)}).encode() + b"\n\n"


class _StreamSend:
    """The ``send`` a :class:`Connection` writes through: its ``websocket.send`` events become
    events of the stream (one ASGI body chunk each)."""

    __slots__ = ("send",)

    def __init__(self, send: Send) -> None:
        self.send = send

    async def __call__(self, event: dict[str, Any]) -> None:
        text = event.get("text")
        if text is not None:
            await self.send(
                {"type": "http.response.body", "body": _sse_frame(text), "more_body": True}
            )


class _Inbox:
    """Listens to the session's topic; hands its frames to the session one at a time, in order.
    Holds at most a POST burst of frames (``PUBLISH_BURST + SUBSCRIBE_BURST``): beyond it (only
    a client that POSTs through several workers faster than its session answers), a frame is
    dropped with a warning, and its request times out on the client."""

    __slots__ = ("queue",)

    def __init__(self, size: int) -> None:
        self.queue: asyncio.Queue[str] = asyncio.Queue(maxsize=size)

    def deliver(self, message: Message) -> None:
        try:
            self.queue.put_nowait(str(message.payload))
        except asyncio.QueueFull:
            metrics.DROPS.labels("http_inbox_full").inc()
            logger.warning("an HTTP session's inbox is full: a frame is dropped")


class _Orders:
    """An authenticated session's hub subscriber on its user's control topic
    (:mod:`megaphone.server.control`): a disconnect ends the stream with its code; an
    unsubscribe ends that subscription with its reason; a re-check reloads the user (gone or
    inactive: 4401) and asks the policy again. Orders run one after the other, in order."""

    __slots__ = ("_last", "live", "session", "user_pk")

    def __init__(self, session: Session, live: _Live, user_pk: object) -> None:
        self.session = session
        self.live = live
        self.user_pk = user_pk
        self._last: asyncio.Task[None] | None = None

    def deliver(self, message: Message) -> None:
        order = decode_order(message.payload)
        if order is None:
            return
        if order.op == "disconnect":
            self.live.end(order.code)
            return
        self._last = asyncio.get_running_loop().create_task(self._after(self._last, order))

    async def _after(self, previous: asyncio.Task[None] | None, order: Order) -> None:
        if previous is not None:
            await asyncio.wait({previous})
        if self.live.code is not None:
            return
        try:
            if order.op == "unsubscribe":
                await self.session.end(order.topic, order.reason)
                return
            user = await active_user(str(self.user_pk))
            if user is None:
                self.live.end(CloseCode.UNAUTHORIZED)
                return
            await self.session.recheck(user)
        except BackendUnavailable as exc:
            logger.error(
                "order %s on HTTP session %s not done: %s", order.op, self.session.client, exc
            )
        except Exception:  # a bug, or the database down: as loud as can be, the others go on
            logger.exception("order %s on HTTP session %s failed", order.op, self.session.client)


class _Live:
    """One open stream: its session, how it ends."""

    def __init__(self) -> None:
        self.code: int | None = None
        self.retry_ms: int | None = None
        self.ended = asyncio.Event()

    def end(self, code: int, retry_ms: int | None = None) -> None:
        if self.code is None:
            self.code, self.retry_ms = int(code), retry_ms
            self.ended.set()


class HttpSessions:
    """The ASGI application of ``/sse/connect/``; see the module docstring."""

    def __init__(self) -> None:
        mark_serving()
        self._rates: OrderedDict[str, TokenBucket] = OrderedDict()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        match = PATH.match(scope["path"])
        session_id = match["session"] if match else None
        if scope["method"] in ("GET", "HEAD") and session_id is None:
            return await self._stream(scope, receive, send)
        if scope["method"] == "POST" and session_id is not None:
            return await self._post(scope, receive, send, session_id)
        allow = b"GET" if session_id is None else b"POST"
        await respond(send, 405, f"Method Not Allowed: use {allow.decode()}", [(b"allow", allow)])

    # The upstream: POST ---------------------------------------------------------------------

    def _rate(self, session_id: str) -> TokenBucket:
        bucket = self._rates.get(session_id)
        if bucket is None:
            config = get_config()
            unlimited = not (config.PUBLISH_RATE and config.SUBSCRIBE_RATE)
            bucket = self._rates[session_id] = TokenBucket(
                0 if unlimited else config.PUBLISH_RATE + config.SUBSCRIBE_RATE,
                config.PUBLISH_BURST + config.SUBSCRIBE_BURST,
            )
            if len(self._rates) > MAX_RATE_ENTRIES:
                self._rates.popitem(last=False)
        else:
            self._rates.move_to_end(session_id)
        return bucket

    async def _post(self, scope: Scope, receive: Receive, send: Send, session_id: str) -> None:
        if not owns(session_id, scope):
            log_refusal(logger, scope, "POST for a session that is not its own")
            metrics.REFUSALS.labels("forbidden").inc()
            return await respond(send, 403, "Forbidden: not your session", [])
        limit = get_config().MAX_MESSAGE_SIZE
        body = await _read_body(receive, limit)
        if body is None:
            metrics.REFUSALS.labels("too_big").inc()
            await self._publish(session_id, json.dumps({"$close": int(CloseCode.MESSAGE_TOO_BIG)}))
            return await respond(send, 413, f"Payload Too Large: over {limit} bytes", [])
        if not self._rate(session_id).allow():
            metrics.REFUSALS.labels("rate_limited").inc()
            return await respond(
                send, 429, "Too Many Requests: slow down", [(b"retry-after", b"1")]
            )
        try:
            text = body.decode("utf-8")
        except UnicodeDecodeError:
            return await respond(send, 400, "Bad Request: the body is not UTF-8", [])
        if not await self._publish(session_id, text):
            return await respond(
                send, 503, "Service Unavailable: try again", [(b"retry-after", b"1")]
            )
        await respond(send, 202, "Accepted", [])

    @staticmethod
    async def _publish(session_id: str, text: str) -> bool:
        try:
            node = await get_node()
            await node.publish(session_topic(session_id), text)
        except (BackendUnavailable, InvalidText) as exc:
            logger.warning("could not forward a frame to an HTTP session: %s", exc)
            return False
        return True

    # The downstream: the stream -------------------------------------------------------------

    async def _stream(self, scope: Scope, receive: Receive, send: Send) -> None:
        config = get_config()
        try:
            node = await get_node()
            await node.reachable()
        except BackendUnavailable as exc:
            return await backend_unavailable(scope, send, exc)
        await send({"type": "http.response.start", "status": 200, "headers": stream_headers(scope)})
        if scope["method"] == "HEAD":
            return await send({"type": "http.response.body", "body": b""})
        live = _Live()
        session_id = new_session_id(scope)
        connection = Connection(
            _StreamSend(send),
            message_event,
            lambda: live.end(CloseCode.SLOW_CONSUMER),
            max_messages=config.OUTBOX_MAX_MESSAGES,
            max_bytes=config.OUTBOX_MAX_BYTES,
            websocket=False,
        )
        user = scope.get("user")
        session = Session(
            node,
            connection,
            client=secrets.token_urlsafe(9),
            user=user_name(scope),
            principal=user,
            publish_limit=TokenBucket(config.PUBLISH_RATE, config.PUBLISH_BURST),
            subscribe_limit=TokenBucket(config.SUBSCRIBE_RATE, config.SUBSCRIBE_BURST),
        )
        inbox = _Inbox(config.PUBLISH_BURST + config.SUBSCRIBE_BURST)
        watches: list[tuple[str, Any]] = [(session_topic(session_id), inbox)]
        if getattr(user, "is_authenticated", False):
            assert user is not None
            watches.append((user_control_topic(user.pk), _Orders(session, live, user.pk)))
        timer = None
        expires = scope.get(TOKEN_EXPIRES)
        if expires is not None:
            timer = asyncio.get_running_loop().call_later(
                max(0.0, expires - time.time()), live.end, CloseCode.UNAUTHORIZED
            )
        unregister = register_stream(lambda ms: live.end(CloseCode.SERVICE_RESTART, ms))
        tasks: list[asyncio.Task[Any]] = []
        metrics.HTTP_SESSIONS.inc()
        metrics.HTTP_SESSIONS_ACCEPTED.inc()
        try:
            for topic, listener in watches:
                await node.subscribe(topic, listener)
            await send(
                {
                    "type": "http.response.body",
                    "body": f"event: session\ndata: {session_id}\n\n".encode(),
                    "more_body": True,
                }
            )
            session.send(session.hello())
            connection.start()
            await session.open_server_subscriptions(user, scope)
            logger.info("HTTP session %s opened", session.client)
            tasks = [
                asyncio.ensure_future(self._handle(session, inbox, live)),
                asyncio.ensure_future(until_disconnect(receive)),
                asyncio.ensure_future(heartbeats_to(send, config.SSE_HEARTBEAT)),
                asyncio.ensure_future(live.ended.wait()),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            if tasks[1] not in done and live.code is not None:
                await self._finish(connection, send, live)
        except OSError:
            pass
        finally:
            for task in tasks:
                task.cancel()
            unregister()
            if timer is not None:
                timer.cancel()
            metrics.HTTP_SESSIONS.dec()
            for topic, listener in watches:
                await node.unsubscribe(topic, listener)
            await connection.close()
            await session.close()
            logger.info("HTTP session %s ended: code %s", session.client, live.code)

    @staticmethod
    async def _finish(connection: Connection, send: Send, live: _Live) -> None:
        """Send what is queued (not for a slow consumer), the ``retry:`` hint, the close; a
        client that stopped reading is given up after :data:`CLOSE_TIMEOUT` seconds."""
        assert live.code is not None
        code, retry_ms = live.code, live.retry_ms

        async def finish() -> None:
            if code != CloseCode.SLOW_CONSUMER:
                await connection.flush()
            await connection.close()
            tail = b"" if retry_ms is None else f"retry: {retry_ms}\n\n".encode()
            await send({"type": "http.response.body", "body": tail + close_event(code)})

        try:
            await asyncio.wait_for(finish(), CLOSE_TIMEOUT)
        except TimeoutError:
            logger.warning("an HTTP session's client did not take its close (code %d)", code)

    @staticmethod
    async def _handle(session: Session, inbox: _Inbox, live: _Live) -> None:
        while True:
            text = await inbox.queue.get()
            code = _control_close(text)
            if code is not None:
                live.end(code)
                return
            try:
                await session.handle_text(text)
            except RateLimitIgnored as exc:
                logger.warning("closing an HTTP session: %s", exc)
                live.end(CloseCode.RATE_LIMITED)
                return


def _control_close(text: str) -> int | None:
    """The close code of a ``{"$close": code}`` order from another worker (a POST it refused
    over its size), else None. Only ever found on the session's own topic: at worst a client
    orders its own session closed."""
    if not text.startswith('{"$close"'):
        return None
    with contextlib.suppress(ValueError, TypeError, KeyError):
        code = json.loads(text)["$close"]
        if code in (int(CloseCode.MESSAGE_TOO_BIG),):
            return int(code)
    return None


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None once it is over ``limit`` bytes."""
    chunks: list[bytes] = []
    size = 0
    while True:
        event = await receive()
        if event["type"] == "http.disconnect":
            return b"".join(chunks)
        chunk = event.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not event.get("more_body", False):
            return b"".join(chunks)


def with_http_sessions(http: Any, sessions: Any) -> Any:
    """An ASGI application that sends HTTP requests for :data:`PATH` to ``sessions`` and every
    other request to ``http``."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and PATH.match(scope["path"]):
            await sessions(scope, receive, send)
        else:
            await http(scope, receive, send)

    return route
