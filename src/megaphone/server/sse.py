"""Server-Sent Events: ``/sse/broadcast/`` (topic ``broadcast``) and ``/sse/broadcast/<topic>/``,
the one-way twin of the raw WebSocket endpoint, for any HTTP client (``curl -N``, a browser's
``EventSource``) with no client library.

The stream is ``text/event-stream``. Each message is one event whose ``id`` is
``<epoch>:<offset>``; a text message is its ``data`` (one ``data:`` line per line of it, so a
client gets it back with its line breaks as ``\\n``), a binary one is ``event: binary`` with its
bytes base64-encoded as ``data``. A new stream starts with an ``id:`` line alone (the topic's
position, dispatching no event), so that a client that reconnects before the first message
resumes from where it started.

**Resuming.** A request with ``Last-Event-ID: <epoch>:<offset>`` (the header a browser sends when
it reconnects, or the ``last_event_id`` query parameter) gets exactly the messages after that
offset, then live ones, with no gap and no duplicate: the stream joins the hub first and buffers
live messages, reads history, then drops the buffered ones history covered (as
:mod:`.session` does). When the history cannot fill the gap (another epoch, trimmed history, an
offset beyond the topic's latest, more than ``RECOVERY_MAX_MESSAGES``, or a principal that may
not read the topic's history), the first event is ``event: reset`` whose ``id`` is the current
position and whose ``data`` is ``{"epoch": ..., "offset": ..., "missed": null}``. An id that is not
``<epoch>:<offset>`` gets 400 with the reason.

**Ending.** A stream that falls behind (its outbox crosses ``OUTBOX_MAX_MESSAGES`` or
``OUTBOX_MAX_BYTES``), whose live messages show a gap, whose token expires or whose user logs
out, ends; the client reconnects with its last id and resumes (a refused token: 403). On SIGTERM
every stream ends after a ``retry:`` line (a random 0.5 to 2.5 seconds), so that clients come
back to another server, or this one restarted, without all arriving at once. A comment
(``: ping``) every ``SSE_HEARTBEAT`` seconds keeps proxies from closing an idle stream.

The handshake rules are the WebSocket endpoints': the same guards (foreign browser ``Origin``:
403, ``MAX_CONNECTIONS_PER_IP``, session cookie or ``?token=``) and the same permission
(``may_subscribe``). An origin in ``ALLOWED_ORIGINS`` other than the page's own gets the CORS
headers that let its ``EventSource`` read the stream, with credentials.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import signal
import time
from collections.abc import Awaitable, Callable
from typing import Any

from megaphone.backends import BackendUnavailable, HistoryPage
from megaphone.conf import get_config
from megaphone.core import metrics
from megaphone.core.decoding import InvalidText, strict_query
from megaphone.core.logs import get_logger, log_refusal
from megaphone.core.message import Message
from megaphone.core.outbox import Outbox
from megaphone.core.topics import InvalidTopic, validate_topic
from megaphone.engine.node import Node, get_node
from megaphone.engine.publishing import mark_serving
from megaphone.server.auth import TOKEN_EXPIRES, user_control_topic
from megaphone.server.control import decode_order
from megaphone.server.origins import header, origin_allowed, parse_origin, request_origin
from megaphone.server.permissions import may_read_history, may_subscribe
from megaphone.server.session import read_since

logger = get_logger(__name__)

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]

#: The paths served; the topic of ``/sse/broadcast/`` is ``broadcast``.
PATH = re.compile(r"^/sse/broadcast/(?:(?P<topic>[^/]+)/)?$")
DEFAULT_TOPIC = "broadcast"
_EPOCH = re.compile(r"[A-Za-z0-9_.\-]{1,64}")
_OFFSET = re.compile(r"[0-9]{1,19}")
#: The reconnect delay (milliseconds) a stream ended by a shutdown suggests: random in this range.
SHUTDOWN_RETRY_MS = (500, 2500)
#: Seconds a shutdown waits for every stream to send its ``retry:`` before the server stops.
SHUTDOWN_FLUSH = 1.0
#: Messages read from history at once while a resumed stream catches up.
HISTORY_PAGE = 256


class InvalidEventId(ValueError):
    """A ``Last-Event-ID`` that is not ``<epoch>:<offset>``."""


def parse_event_id(value: str) -> tuple[str, int]:
    """``(epoch, offset)`` of an event id ``<epoch>:<offset>``; :class:`InvalidEventId` else."""
    epoch, colon, offset = value.strip().rpartition(":")
    if not (colon and _EPOCH.fullmatch(epoch) and _OFFSET.fullmatch(offset)):
        raise InvalidEventId(f"invalid Last-Event-ID {value[:80]!r}: expected <epoch>:<offset>")
    return epoch, int(offset)


def _data_lines(text: str) -> bytes:
    """``text`` as ``data:`` lines (CR, LF and CRLF all end a line in SSE)."""
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    return "".join(f"data: {line}\n" for line in lines).encode()


def sse_event(message: Message) -> bytes:
    """The event that carries ``message`` (an :data:`~megaphone.core.message.Encoder`: run once
    per message per process, whatever the number of streams)."""
    head = f"id: {message.epoch}:{message.offset}\n".encode()
    if isinstance(message.payload, bytes):
        return head + b"event: binary\ndata: " + base64.b64encode(message.payload) + b"\n\n"
    return head + _data_lines(message.payload) + b"\n"


def reset_event(epoch: str, offset: int) -> bytes:
    """``event: reset`` at the position ``epoch:offset``: what was missed cannot be sent."""
    data = json.dumps({"epoch": epoch, "offset": offset, "missed": None})
    return f"event: reset\nid: {epoch}:{offset}\ndata: {data}\n\n".encode()


async def respond(send: Send, status: int, text: str, headers: list[tuple[bytes, bytes]]) -> None:
    body = (text + "\n").encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [(b"content-type", b"text/plain; charset=utf-8"), *headers],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def backend_unavailable(scope: Scope, send: Send, exc: BackendUnavailable) -> None:
    """Refuse a request for the backend's failure: logged, counted, 503 with ``Retry-After``."""
    log_refusal(logger, scope, f"backend: {exc}")
    metrics.REFUSALS.labels("backend").inc()
    await respond(send, 503, "Service Unavailable: try again", [(b"retry-after", b"1")])


class _Stream:
    """One open event stream: the hub subscriber, its bounded outbox and how it ends."""

    def __init__(self, topic: str, epoch: str, last: int, max_messages: int, max_bytes: int):
        self.topic = topic
        self.epoch = epoch
        self.last = last  # offset of the last message queued for the client
        self.buffer: list[Message] | None = []  # live messages held while history is read
        self.outbox = Outbox(max_messages, max_bytes, self._overflowed)
        self.wake = asyncio.Event()
        self.ended: str | None = None  # why the stream ends, once it does
        self.retry_ms: int | None = None

    def deliver(self, message: Message) -> None:
        if self.buffer is not None:
            self.buffer.append(message)
        elif message.epoch != self.epoch or message.offset > self.last + 1:
            # A gap (a message lost on the bus, a new epoch): the client resumes from its id.
            self.end("gap in live messages")
        elif message.offset == self.last + 1:
            self.last = message.offset
            self.queue(message.encoded(sse_event), message.size)
        # else a duplicate: sent already

    def go_live(self) -> None:
        buffer, self.buffer = self.buffer or [], None
        for message in buffer:
            self.deliver(message)

    def queue(self, chunk: bytes, size: int) -> None:
        if self.outbox.put(chunk, size):
            self.wake.set()

    def _overflowed(self, dropped: int) -> None:
        metrics.SLOW_DISCONNECTS.inc()
        metrics.DROPS.labels("slow_consumer").inc(dropped)
        self.end("slow consumer: outbox full")

    def end(self, reason: str, retry_ms: int | None = None) -> None:
        if self.ended is None:
            self.ended, self.retry_ms = reason, retry_ms
            self.wake.set()

    async def write(self, send: Send) -> None:
        """Send what is queued, a batch per send, until the stream ends."""
        while True:
            await self.wake.wait()
            self.wake.clear()
            batch = self.outbox.take_batch()
            if batch:
                await send(
                    {"type": "http.response.body", "body": b"".join(batch), "more_body": True}
                )
            if self.ended is not None:
                return


class _EndOnOrder:
    """A stream's hub subscriber on its user's control topic (:mod:`megaphone.server.control`):
    a logout or a disconnect ends the stream, and so do an unsubscribe of its topic and a
    re-check (the browser's reconnection is decided afresh, by the policy of the moment)."""

    __slots__ = ("stream", "topic")

    def __init__(self, stream: _Stream, topic: str) -> None:
        self.stream = stream
        self.topic = topic

    def deliver(self, message: Message) -> None:
        order = decode_order(message.payload)
        if order is None or (order.op == "unsubscribe" and order.topic != self.topic):
            return
        self.stream.end(f"its user's connections got the order {order.op}")


#: How to end each open stream of this process for a shutdown (given the retry hint, in ms):
#: the event streams' and the HTTP sessions' (:mod:`.httpsession`).
_open: set[Callable[[int], None]] = set()
_closed_all: asyncio.Event | None = None
_signals_hooked = False


def _hook_sigterm() -> None:
    """On SIGTERM, end every open stream with a ``retry:`` hint and give them up to
    :data:`SHUTDOWN_FLUSH` seconds to send it, then run the server's own handler (which, under
    daphne, cancels every application at once). Installed once per process, from the event
    loop's thread (the main thread under uvicorn, daphne and ``manage.py serve``); elsewhere it
    cannot be, and streams simply end with the server. A second SIGTERM goes to the server's
    handler at once."""
    global _signals_hooked
    if _signals_hooked:
        return
    _signals_hooked = True
    loop = asyncio.get_running_loop()
    previous = signal.getsignal(signal.SIGTERM)
    pending: list[asyncio.Task[None]] = []

    def server_handler(signum: int, frame: Any) -> None:
        if callable(previous):
            previous(signum, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            signal.raise_signal(signal.SIGTERM)

    async def shut_down(signum: int, frame: Any) -> None:
        _end_all_for_shutdown()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(_none_open().wait(), SHUTDOWN_FLUSH)
        server_handler(signum, frame)

    def start_shutdown(signum: int, frame: Any) -> None:
        pending.append(loop.create_task(shut_down(signum, frame)))

    def on_sigterm(signum: int, frame: Any) -> None:
        if pending or loop.is_closed():
            return server_handler(signum, frame)
        loop.call_soon_threadsafe(start_shutdown, signum, frame)

    try:
        signal.signal(signal.SIGTERM, on_sigterm)
    except ValueError:  # not the main thread
        logger.info("SSE streams will not get a retry hint on SIGTERM (not the main thread)")


def _none_open() -> asyncio.Event:
    """An event set once no stream is open in this process."""
    global _closed_all
    if _closed_all is None:
        _closed_all = asyncio.Event()
    if not _open:
        _closed_all.set()
    return _closed_all


def _end_all_for_shutdown() -> None:
    for end in list(_open):
        end(random.randint(*SHUTDOWN_RETRY_MS))


def register_stream(end_for_shutdown: Callable[[int], None]) -> Callable[[], None]:
    """Count a stream as open until the returned function is called: a SIGTERM calls
    ``end_for_shutdown(retry_ms)`` and waits (up to :data:`SHUTDOWN_FLUSH`) for it to end."""
    _hook_sigterm()
    _open.add(end_for_shutdown)
    if _closed_all is not None:
        _closed_all.clear()

    def unregister() -> None:
        _open.discard(end_for_shutdown)
        if not _open and _closed_all is not None:
            _closed_all.set()

    return unregister


class EventStreams:
    """The ASGI application of the SSE endpoints (HTTP scopes whose path matches :data:`PATH`;
    route them with :func:`with_event_streams`). See the module docstring."""

    def __init__(self) -> None:
        mark_serving()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope["path"]
        if scope["method"] not in ("GET", "HEAD"):
            return await respond(send, 405, "Method Not Allowed: use GET", [(b"allow", b"GET")])
        match = PATH.match(path)
        try:
            topic = validate_topic((match and match["topic"]) or DEFAULT_TOPIC)
            since = self._last_event_id(scope)
        except (InvalidTopic, InvalidText, InvalidEventId) as exc:
            log_refusal(logger, scope, str(exc))
            metrics.REFUSALS.labels("bad_request").inc()
            return await respond(send, 400, f"Bad Request: {exc}", [])
        user = scope.get("user")
        if not may_subscribe(user, topic):
            log_refusal(logger, scope, "may not subscribe")
            metrics.REFUSALS.labels("forbidden").inc()
            return await respond(send, 403, "Forbidden: may not subscribe to this topic", [])
        # Resuming would disclose the topic's history to one who may not read it: a reset.
        resume = since is not None and may_read_history(user, topic)
        config = get_config()
        stream = _Stream(topic, "", 0, config.OUTBOX_MAX_MESSAGES, config.OUTBOX_MAX_BYTES)
        try:
            node = await get_node()
            await node.subscribe(topic, stream)
        except BackendUnavailable as exc:
            return await backend_unavailable(scope, send, exc)
        try:
            await self._serve(
                scope, receive, send, node, stream, since, resume, config.SSE_HEARTBEAT
            )
        finally:
            await node.unsubscribe(topic, stream)

    @staticmethod
    def _last_event_id(scope: Scope) -> tuple[str, int] | None:
        values = [
            v
            for k, v in strict_query(scope.get("query_string", b"").decode("latin-1"))
            if k == "last_event_id"
        ]
        value = header(scope, b"last-event-id")
        if value is None and values:
            value = values[-1]
        return None if value is None or value == "" else parse_event_id(value)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        node: Node,
        stream: _Stream,
        since: tuple[str, int] | None,
        resume: bool,
        heartbeat: float,
    ) -> None:
        try:
            if since is None or not resume:
                page, recovered = await node.history(stream.topic, 0, 0), False
            else:
                page, recovered = await read_since(
                    node, stream.topic, since[1], since[0], HISTORY_PAGE
                )
        except BackendUnavailable as exc:
            return await backend_unavailable(scope, send, exc)
        await send({"type": "http.response.start", "status": 200, "headers": stream_headers(scope)})
        if scope["method"] == "HEAD":
            return await send({"type": "http.response.body", "body": b""})
        stream.epoch = page.epoch
        if recovered:
            assert since is not None
            stream.last = since[1]
        else:
            stream.last = page.offset
            first = f"id: {page.epoch}:{page.offset}\n\n".encode()
            await send(
                {
                    "type": "http.response.body",
                    "body": first if since is None else reset_event(page.epoch, page.offset),
                    "more_body": True,
                }
            )
        unregister = register_stream(lambda ms: stream.end("server shutting down", ms))
        metrics.SSE_CONNECTIONS.inc()
        metrics.SSE_CONNECTIONS_ACCEPTED.inc()
        logger.info(
            "SSE stream opened on %s (%s)",
            stream.topic,
            "resumed" if recovered else "from now" if since is None else "reset",
        )
        watch, timer = await self._watch_user(scope, node, stream)
        tasks: list[asyncio.Task[Any]] = []
        try:
            if recovered:
                await self._catch_up(node, stream, page, send)
            stream.go_live()
            tasks = [
                asyncio.ensure_future(stream.write(send)),
                asyncio.ensure_future(until_disconnect(receive)),
                asyncio.ensure_future(_heartbeats(stream, heartbeat)),
            ]
            done, _ = await asyncio.wait(tasks[:2], return_when=asyncio.FIRST_COMPLETED)
            if tasks[0] in done:
                tasks[0].result()  # a send that failed: the client is gone
                tail = b"" if stream.retry_ms is None else f"retry: {stream.retry_ms}\n\n".encode()
                await send({"type": "http.response.body", "body": tail})
            else:
                stream.end("client left")
        except OSError:
            stream.end("client left")
        finally:
            for task in tasks:
                task.cancel()
            unregister()
            metrics.SSE_CONNECTIONS.dec()
            if timer is not None:
                timer.cancel()
            if watch is not None:
                await node.unsubscribe(watch[0], watch[1])
            logger.info("SSE stream on %s ended: %s", stream.topic, stream.ended)

    @staticmethod
    async def _watch_user(
        scope: Scope, node: Node, stream: _Stream
    ) -> tuple[tuple[str, _EndOnOrder] | None, asyncio.TimerHandle | None]:
        """End the stream when its token expires or its user logs out."""
        timer = None
        expires = scope.get(TOKEN_EXPIRES)
        if expires is not None:
            timer = asyncio.get_running_loop().call_later(
                max(0.0, expires - time.time()), stream.end, "its token expired"
            )
        user = scope.get("user")
        if not getattr(user, "is_authenticated", False):
            return None, timer
        assert user is not None
        watch = (user_control_topic(user.pk), _EndOnOrder(stream, stream.topic))
        await node.subscribe(*watch)
        return watch, timer

    @staticmethod
    async def _catch_up(node: Node, stream: _Stream, page: HistoryPage, send: Send) -> None:
        """Send the history after ``stream.last``, a page at a time (each send waits for the
        client: no outbox grows), emptying the live buffer before each read (history holds it).
        History that lost messages on the way ends the stream: the client resumes from its id and
        gets a reset."""
        while True:
            if page.messages:
                await send(
                    {
                        "type": "http.response.body",
                        "body": b"".join(m.encoded(sse_event) for m in page.messages),
                        "more_body": True,
                    }
                )
                stream.last = page.messages[-1].offset
            if stream.last >= page.offset:
                return
            stream.buffer = []
            page = await node.history(stream.topic, stream.last, HISTORY_PAGE)
            if not (
                page.epoch == stream.epoch
                and page.complete
                and page.messages
                and page.messages[0].offset == stream.last + 1
            ):
                stream.buffer = []
                stream.end("history trimmed while catching up")
                return


def stream_headers(scope: Scope) -> list[tuple[bytes, bytes]]:
    """The response headers of an event stream: unbuffered, uncached, and the CORS headers that
    let an ``ALLOWED_ORIGINS`` page other than the server's own read it with credentials."""
    headers = [
        (b"content-type", b"text/event-stream"),
        (b"cache-control", b"no-store"),
        (b"x-accel-buffering", b"no"),  # nginx: do not buffer this response
        (b"vary", b"Origin"),
    ]
    origin = header(scope, b"origin")
    if origin is not None and origin_allowed(origin, scope) and _foreign(origin, scope):
        headers.append((b"access-control-allow-origin", origin.encode("latin-1")))
        headers.append((b"access-control-allow-credentials", b"true"))
    return headers


def _foreign(origin: str, scope: Scope) -> bool:
    """Whether ``origin`` is another than the request's own (a cross-origin ``EventSource``)."""
    return parse_origin(origin) != request_origin(scope)


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _heartbeats(stream: _Stream, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        stream.queue(b": ping\n\n", 8)


async def heartbeats_to(send: Send, interval: float) -> None:
    """Send a ``: ping`` comment every ``interval`` seconds (a stream without its own outbox:
    each send waits for the client)."""
    while True:
        await asyncio.sleep(interval)
        await send({"type": "http.response.body", "body": b": ping\n\n", "more_body": True})


def with_event_streams(http: Any, streams: Any) -> Any:
    """An ASGI application that sends HTTP requests for :data:`PATH` to ``streams`` (the
    :class:`EventStreams`, behind its guards) and every other request to ``http``."""

    async def route(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and PATH.match(scope["path"]):
            await streams(scope, receive, send)
        else:
            await http(scope, receive, send)

    return route
