"""The native transport: Megaphone's WebSocket endpoints served without ASGI.

``manage.py serve --transport native`` runs the project under uvicorn as usual (its HTTP views,
the SSE streams, the HTTP sessions, its own WebSocket routes: all through its ASGI application),
except that a WebSocket handshake on one of Megaphone's endpoints
(:data:`~megaphone.server.consumers.ENDPOINTS`: ``/ws/broadcast/``, ``/ws/broadcast/<topic>/``,
``/ws/connect/``) is taken over by :class:`NativeWebSocket` as soon as uvicorn's HTTP parser has
read its head. What an ASGI server costs every connection is gone:

* **The request is parsed once** (by uvicorn's httptools parser): no second parse and no
  ``Headers`` objects of a WebSocket library; the 101 response is one ``bytes`` write.
* **No coroutine chain for an idle connection.** Under ASGI a connection lives inside ``await
  app(scope, receive, send)``: one suspended frame per middleware layer (13 coroutines and a
  task). Here the guards run once, during the handshake, in one short task, and an open
  connection is a protocol object, the endpoint's consumer and its outbox: frames received are
  handed to the consumer by a task that exists only while frames wait for it.
* **One keepalive timer per process**, not one per connection (:class:`_Keepalive`).
* **The handshake's headers are let go** once the consumer's ``connect`` is over (the guards,
  the topic policy and the ``server_subscriptions`` receivers read them before):
  ``scope["headers"]`` is empty afterwards.

It keeps everything the ASGI transport guarantees, in the same terms: the same consumers (so the
same protocol, topic policy, limits, close codes and logs), the same guards in the same order
(uvicorn's proxy headers when they are on, :class:`~megaphone.server.guards.OriginValidator`,
the per-address count of :class:`~megaphone.server.guards.ConnectionLimiter`, shared with the
SSE streams, and :func:`~megaphone.server.auth.AuthMiddlewareStack`: session cookie or
``?token=``), refused handshakes answered with HTTP 403, the ``megaphone.write_frame`` path
(frames written once per loop turn), and the bounds of :mod:`megaphone.server.uvicorn`: messages
over ``MAX_MESSAGE_SIZE`` closed with 1009 before they are buffered, invalid UTF-8 with 1007 (a
fragmented message as soon as a fragment cannot start valid text), protocol errors with 1002,
a client that floods is not read while the consumer has :data:`MAX_WAITING` frames to handle, the
pongs of a client that does not read count toward the outbox bound (4408), a close frame between
fragments is answered as any close, a client that does not answer the server's close frame is
dropped :data:`CLOSE_TIMEOUT` seconds later, and a dead connection (no pong within
``PING_TIMEOUT`` of a ping; a connection is pinged once it has been silent for
``PING_INTERVAL``) is closed with 1011. A graceful shutdown closes every connection with 1012.

What it does not do: permessage-deflate (Megaphone turns it off under uvicorn too), and the
project's own ASGI middleware is not run for Megaphone's endpoints (a project that wraps them in
middleware of its own keeps the default transport; see ``docs/deploy.md``).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import codecs
import functools
import hashlib
import math
import re
import urllib.parse
from typing import TYPE_CHECKING, Any, ClassVar

import httptools
from channels.exceptions import StopConsumer
from uvicorn.middleware.proxy_headers import ProxyHeadersMiddleware
from websockets.exceptions import ProtocolError
from websockets.frames import Close
from websockets.speedups import apply_mask

from megaphone.conf import get_config
from megaphone.core import metrics
from megaphone.core.closecodes import CloseCode
from megaphone.core.frames import WRITE_FRAME_EXTENSION, event_frame
from megaphone.core.logs import get_logger
from megaphone.server.auth import AuthMiddlewareStack
from megaphone.server.consumers import ENDPOINTS, EVENTS_PER_TURN, _Endpoint
from megaphone.server.guards import (
    OPEN_CONNECTIONS,
    OriginValidator,
    client_address,
    over_limit,
    refuse_handshake,
    release_address,
)
from megaphone.server.uvicorn import CLOSE_TIMEOUT, Flag, HttpProtocol, pongs_over_bound

if TYPE_CHECKING:
    from uvicorn.server import ServerState

logger = get_logger(__name__)

#: Received messages that may wait for the consumer; past it, the socket is not read (and what
#: was read is not parsed) until the consumer has taken them.
MAX_WAITING = 64
#: Frames handled in one go; past it, the rest waits for the next turn of the event loop (and
#: the socket is not read meanwhile), so a client sending thousands of tiny frames in one read
#: (control frames, empty fragments: 6 bytes each) holds the loop no longer than that.
MAX_FRAMES_PER_TURN = 1024
#: Keepalive slots per ``PING_INTERVAL``: each connection is looked at once per interval, a
#: slot's worth of connections at a time.
KEEPALIVE_SLOTS = 16
#: RFC 6455's close code for a frame that breaks the protocol (the ASGI transport's too: the
#: ``websockets`` parser sends it); not one of Megaphone's own (:class:`CloseCode`).
PROTOCOL_ERROR = 1002
_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_NATIVE = "megaphone.native"  # the scope key through which the guards reach the connection
_CONNECT = {"type": "websocket.connect"}

# Connection states.
_HANDSHAKE, _OPEN, _CLOSING, _CLOSED = range(4)


class _Refused(Exception):
    """A handshake that is not a valid WebSocket opening (HTTP status and reason)."""

    def __init__(self, status: int, reason: str, headers: bytes = b"") -> None:
        super().__init__(reason)
        self.status = status
        self.headers = headers


class Disconnected(OSError):
    """An ASGI send to a connection that is closed (what uvicorn raises, ``ClientDisconnected``,
    is an ``OSError`` too)."""


_routes: list[tuple[re.Pattern[str], type[_Endpoint]]] = [
    (re.compile(route), consumer) for route, consumer in ENDPOINTS
]


@functools.lru_cache(maxsize=4096)
def _endpoint(path: str) -> tuple[type[_Endpoint], dict[str, Any]] | None:
    """The Megaphone endpoint ``path`` routes to (its consumer class and ``url_route``), or
    None: the routes of :data:`~megaphone.server.consumers.ENDPOINTS`, matched as Channels'
    ``URLRouter`` matches them (on the path without its leading slash). Cached: the connections
    of one topic share one ``url_route`` (read, never written)."""
    path = path.lstrip("/")
    for regex, consumer in _routes:
        match = regex.search(path)
        if match is not None:
            return consumer, {"args": (), "kwargs": match.groupdict()}
    return None


def _admit_native(inner: Any) -> Any:
    """The per-address limit of :class:`~megaphone.server.guards.ConnectionLimiter`, for a
    connection that outlives its handshake: the count is taken here and given back when the
    connection ends (:meth:`NativeWebSocket.connection_lost`), not when the handshake does."""

    async def admit(scope: dict[str, Any], receive: Any, send: Any) -> Any:
        address = client_address(scope)
        refusal = over_limit(OPEN_CONNECTIONS, address)
        if refusal is not None:
            return await refuse_handshake(
                scope, receive, send, reason=refusal, label="connections_per_ip"
            )
        OPEN_CONNECTIONS[address] += 1
        scope[_NATIVE].counted = address
        return await inner(scope, receive, send)

    return admit


async def _admitted(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The end of the handshake's guards: the scope they built is the connection's."""
    native = scope.pop(_NATIVE)
    native.admitted = scope


_guards: Any = None


def _handshake_guards(proxy_headers: bool, trusted: Any) -> Any:
    """The guards of a native handshake, built once per process: the ASGI transport's, in the
    same order, ending in :func:`_admitted` instead of the router and the consumer."""
    global _guards
    if _guards is None:
        guards: Any = OriginValidator(_admit_native(AuthMiddlewareStack(_admitted)))
        if proxy_headers:
            guards = ProxyHeadersMiddleware(guards, trusted_hosts=trusted)
        _guards = guards
    return _guards


class NativeHttpProtocol(HttpProtocol):
    """Megaphone's uvicorn HTTP protocol, handing the WebSocket handshakes of Megaphone's
    endpoints to :class:`NativeWebSocket` (every other request is uvicorn's, as before)."""

    def handle_websocket_upgrade(self) -> None:
        parsed = httptools.parse_url(self.url)
        raw_path = parsed.path
        path = raw_path.decode("ascii")
        if "%" in path:
            path = urllib.parse.unquote(path)
        root_path = self.root_path
        route_path = path[len(root_path) :] if root_path and path.startswith(root_path) else path
        endpoint = _endpoint(route_path)
        if endpoint is None:
            super().handle_websocket_upgrade()
            return
        self.connections.discard(self)
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope.update(
            type="websocket",
            scheme="wss" if self.scheme == "https" else "ws",
            path=path,
            raw_path=raw_path,
            query_string=parsed.query or b"",
        )
        scope["asgi"]["spec_version"] = "2.4"
        native = NativeWebSocket(self.server_state, self.transport)
        self.transport.set_protocol(native)
        native.start(scope, endpoint, self.config.proxy_headers, self.config.forwarded_allow_ips)


class NativeWebSocket(asyncio.Protocol):
    """One WebSocket connection of the native transport: RFC 6455 framing (server side, no
    extensions), flow control, and the consumer it drives (see the module docstring).

    ``send`` is the consumer's ASGI ``send`` (``websocket.accept``, ``websocket.send``,
    ``websocket.close``); the consumer receives ``websocket.connect``, ``websocket.receive`` and
    one ``websocket.disconnect``, in that order, through its ``dispatch``, as under ASGI.
    """

    __slots__ = (
        "_accept_key",
        "_alive",
        "_buffer",
        "_close_code",
        "_close_timer",
        "_consumer",
        "_decoder",
        "_events",
        "_fragments",
        "_fragments_text",
        "_pings_out",
        "_pong_bytes_unread",
        "_pongs",
        "_pongs_unread",
        "_reading_paused",
        "_runner",
        "_server_state",
        "_slot",
        "_state",
        "_told",
        "_writable",
        "admitted",
        "counted",
        "path",
        "transport",
    )

    def __init__(self, server_state: ServerState, transport: asyncio.Transport) -> None:
        self._server_state = server_state
        self.transport = transport
        self._state = _HANDSHAKE
        self._consumer: _Endpoint | None = None
        self._runner: asyncio.Task[None] | None = None
        self._events: list[dict[str, Any]] = []
        self._buffer: bytes | bytearray = b""  # received, not parsed yet
        self._fragments: bytearray | None = None  # the fragmented message being received
        self._fragments_text = False
        self._decoder: codecs.IncrementalDecoder | None = None
        self._close_code: int | None = None  # the code of the client's close frame, once read
        self._close_timer: asyncio.TimerHandle | None = None
        self._writable = Flag()  # the socket's buffer is below its high-water mark
        self._writable.set()
        self._reading_paused = False
        self._alive = True  # something was received since the keepalive last looked
        self._pings_out = 0  # the keepalive tick whose ping is unanswered (0: none)
        self._pongs_unread = self._pong_bytes_unread = 0
        self._pongs: list[bytes] | None = None  # to write once the frames received are handled
        self._accept_key = b""
        self._slot: int | None = None  # the keepalive slot, once open
        self._told = False  # the consumer was handed its websocket.disconnect
        self.admitted: dict[str, Any] | None = None  # the scope, once the guards let it in
        self.counted: str | None = None  # the address counted in OPEN_CONNECTIONS
        self.path = ""

    # The handshake.

    def start(
        self,
        scope: dict[str, Any],
        endpoint: tuple[type[_Endpoint], dict[str, Any]],
        proxy_headers: bool,
        trusted: Any,
    ) -> None:
        """Take the connection over from uvicorn's HTTP protocol: check the opening handshake,
        then run the guards and the consumer's ``connect`` in a task."""
        self._server_state.connections.add(self)  # type: ignore[arg-type]
        self.path = scope["path"]
        try:
            key = _opening_key(scope)
        except _Refused as refused:
            logger.info("refused WebSocket handshake on %s: %s", self.path, refused)
            metrics.REFUSALS.labels("bad_handshake").inc()
            self._respond(refused.status, refused.headers, str(refused).encode())
            return
        cls, route = endpoint
        subprotocols = _header(scope["headers"], b"sec-websocket-protocol")
        offered = subprotocols.decode("latin-1").split(",") if subprotocols else ()
        scope["subprotocols"] = tuple(name.strip() for name in offered)
        scope["url_route"] = route
        scope["extensions"] = {WRITE_FRAME_EXTENSION: self}  # a FrameWriter itself
        scope[_NATIVE] = self
        guards = _handshake_guards(proxy_headers, trusted)
        self._runner = asyncio.get_running_loop().create_task(
            self._handshake(guards, scope, key, cls())
        )

    async def _handshake(
        self, guards: Any, scope: dict[str, Any], key: bytes, consumer: _Endpoint
    ) -> None:
        self._accept_key = key
        try:
            await guards(scope, self._receive_connect, self.send)
            scope = self.admitted  # type: ignore[assignment]
            if scope is None or self._state != _HANDSHAKE:  # refused, or the client left
                return
            consumer.scope = scope
            consumer.base_send = self.send
            self._consumer = consumer
            await consumer.dispatch(_CONNECT)
            # The handshake's headers were for the guards and the consumer's connect (the
            # server_subscriptions receivers included): nothing reads them afterwards, and they
            # are a sixth of an idle connection's memory.
            scope["headers"] = []
        except Exception:
            logger.exception("handshake on %s failed", self.path)
            self._fail_consumer()
        finally:
            self._runner = None
            if self._state == _CLOSED:  # it left meanwhile
                self._uncount()
        if self._consumer is not None and self._events:
            self._run()

    async def _receive_connect(self) -> dict[str, Any]:
        """The ``receive`` of the handshake's guards (a refusing guard reads the connect)."""
        return _CONNECT

    # The consumer's ASGI send.

    async def send(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "websocket.send":
            await self._writable.wait()
            if self._state != _OPEN:
                raise Disconnected(f"{self.path}: the connection is closing or closed")
            self.transport.write(event_frame(message))
        elif kind == "websocket.accept":
            if self._state == _HANDSHAKE:
                self._accept(message)
        elif kind == "websocket.close":
            if self._state == _HANDSHAKE:
                self._respond(403, b"", b"")
            elif self._state == _OPEN:
                self._close(int(message.get("code") or 1000), message.get("reason") or "")
        else:
            raise ValueError(f"a native WebSocket cannot send {kind!r}")

    def _accept(self, message: dict[str, Any]) -> None:
        accept = base64.b64encode(hashlib.sha1(self._accept_key + _GUID).digest())
        head = [
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Accept: ",
            accept,
            b"\r\n",
        ]
        subprotocol = message.get("subprotocol")
        if subprotocol:
            head += [b"Sec-WebSocket-Protocol: ", subprotocol.encode(), b"\r\n"]
        for name, value in [*self._server_state.default_headers, *(message.get("headers") or ())]:
            head += [name, b": ", value, b"\r\n"]
        head.append(b"\r\n")
        self.transport.write(b"".join(head))
        self._state = _OPEN
        self._slot = _Keepalive.of(asyncio.get_running_loop()).add(self)
        if self._reading_paused:
            self._resume_reading()
        elif self._buffer:
            self._parse()

    def _respond(self, status: int, headers: bytes, body: bytes) -> None:
        """An HTTP response instead of the 101 (a refused or invalid handshake), then close."""
        phrase = {400: b"Bad Request", 403: b"Forbidden", 426: b"Upgrade Required"}.get(
            status, b"Internal Server Error"
        )
        head = [b"HTTP/1.1 %d %s\r\n" % (status, phrase)]
        for name, value in self._server_state.default_headers:
            head += [name, b": ", value, b"\r\n"]
        head.append(
            b"content-type: text/plain; charset=utf-8\r\ncontent-length: %d\r\n"
            b"connection: close\r\n%s\r\n" % (len(body), headers)
        )
        self.transport.write(b"".join(head) + body)
        self._state = _CLOSED
        self.transport.close()

    # The frame writer (megaphone.write_frame) and flow control.

    def write(self, frame: bytes) -> bool:
        """Write complete frames now; False if the socket cannot take them now."""
        if self._state == _OPEN and self._writable.is_set():
            self.transport.write(frame)
            return True
        return False

    async def drain(self) -> None:
        """Return once the socket's buffer is below its low-water mark, or it is closed."""
        await self._writable.wait()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()
        self._pongs_unread = self._pong_bytes_unread = 0

    # Receiving.

    def data_received(self, data: bytes) -> None:
        self._alive = True
        if self._state == _CLOSED:
            return
        if self._buffer:
            if self._buffer.__class__ is bytes:
                self._buffer = bytearray(self._buffer)
            self._buffer += data
        else:
            self._buffer = data
        if self._state != _HANDSHAKE:
            self._parse()
        elif len(self._buffer) > get_config().MAX_MESSAGE_SIZE:
            self._pause_reading()  # frames sent before the 101 (no client may): not read on

    def _parse(self) -> None:
        """Handle every complete frame received, while the consumer keeps up (see
        :data:`MAX_WAITING`); keep the rest."""
        buffer, at, size = self._buffer, 0, len(self._buffer)
        max_size = get_config().MAX_MESSAGE_SIZE
        frames = 0
        while size - at >= 2 and self._state != _CLOSED:
            if self._state == _OPEN and (
                len(self._events) >= MAX_WAITING or frames == MAX_FRAMES_PER_TURN
            ):
                self._pause_reading()
                if frames == MAX_FRAMES_PER_TURN:
                    asyncio.get_running_loop().call_soon(self._resume_reading)
                break
            frames += 1
            first, second = buffer[at], buffer[at + 1]
            opcode, length, head = first & 0x0F, second & 0x7F, 6
            if length == 126:
                if size - at < 4:
                    break
                length, head = int.from_bytes(buffer[at + 2 : at + 4], "big"), 8
            elif length == 127:
                if size - at < 10:
                    break
                length, head = int.from_bytes(buffer[at + 2 : at + 10], "big"), 14
            if opcode < 8:  # too big first, as the ASGI transport's parser checks it
                pending = len(self._fragments) if self._fragments is not None else 0
                if pending + length > max_size:
                    self._fail(CloseCode.MESSAGE_TOO_BIG, f"message over {max_size} bytes")
                    break
            problem = _frame_problem(first, second, opcode, length)
            if problem is not None:
                self._fail(PROTOCOL_ERROR, problem)
                break
            end = at + head + length
            if end > size:
                break
            payload = apply_mask(buffer[at + head : end], buffer[at + head - 4 : at + head])
            at = end
            self._frame(first & 0x80, opcode, payload)
        rest = buffer[at:] if at < size else b""
        self._buffer = bytearray(rest) if rest else b""
        self._write_pongs()

    def _pause_reading(self) -> None:
        if not self._reading_paused:
            self._reading_paused = True
            self.transport.pause_reading()

    def _frame(self, fin: int, opcode: int, payload: bytes) -> None:
        if opcode == 0x9:
            self._pong(payload)
        elif opcode == 0xA:
            self._pings_out = 0
        elif opcode == 0x8:
            self._close_received(payload)
        elif self._state != _OPEN:
            return  # after the server's close frame, what the client sends is void
        elif opcode == 0x0:
            self._continuation(fin, payload)
        elif self._fragments is not None:
            self._fail(PROTOCOL_ERROR, "a new message inside a fragmented one")
        elif fin:
            self._message(opcode == 0x1, payload)
        else:
            self._fragments, self._fragments_text = bytearray(payload), opcode == 0x1
            if self._fragments_text:
                self._decoder = codecs.getincrementaldecoder("utf-8")()
                self._check_text(payload, False)

    def _continuation(self, fin: int, payload: bytes) -> None:
        fragments = self._fragments
        if fragments is None:
            self._fail(PROTOCOL_ERROR, "a continuation frame outside a message")
            return
        fragments += payload
        if self._fragments_text and not self._check_text(payload, bool(fin)):
            return
        if fin:
            self._fragments = self._decoder = None
            self._message(self._fragments_text, bytes(fragments))

    def _check_text(self, payload: bytes, final: bool) -> bool:
        """Whether the fragments so far can start valid UTF-8; else fail the connection."""
        assert self._decoder is not None
        try:
            self._decoder.decode(payload, final)
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a text message")
            return False
        return True

    def _message(self, text: bool, payload: bytes) -> None:
        if text:
            try:
                event: dict[str, Any] = {"type": "websocket.receive", "text": payload.decode()}
            except UnicodeDecodeError:
                self._fail(CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a text message")
                return
        else:
            event = {"type": "websocket.receive", "bytes": payload}
        self._queue(event)

    def _pong(self, payload: bytes) -> None:
        """Answer a ping; while the client is not reading, count the pongs toward the outbox
        bound, and close it as a slow consumer past the bound."""
        if self._state != _OPEN:
            return  # nothing follows the server's close frame
        pong = bytes((0x8A, len(payload))) + payload
        if not self._writable.is_set():
            self._pongs_unread += 1
            self._pong_bytes_unread += len(pong)
            if pongs_over_bound(self._pongs_unread, self._pong_bytes_unread):
                logger.warning("closing a slow consumer on %s: pongs unread", self.path)
                metrics.SLOW_DISCONNECTS.inc()
                self._fail(CloseCode.SLOW_CONSUMER, "slow consumer")
                return
        if self._pongs is None:
            self._pongs = [pong]
        else:
            self._pongs.append(pong)

    def _write_pongs(self) -> None:
        """Write the pongs of the frames just handled, in one write."""
        pongs, self._pongs = self._pongs, None
        if pongs:
            self.transport.write(b"".join(pongs))

    def _close_received(self, payload: bytes) -> None:
        try:
            close = Close.parse(payload) if payload else None
        except ProtocolError as exc:
            self._fail(PROTOCOL_ERROR, str(exc))
            return
        except UnicodeDecodeError:
            self._fail(CloseCode.INVALID_PAYLOAD, "invalid UTF-8 in a close reason")
            return
        self._close_code = close.code if close is not None else 1005
        if self._state == _OPEN:  # the client closes: echo its code, the message is void
            self._fragments = self._decoder = None
            self._write_close(close.code if close is not None else None, "")
        self._end()

    # Closing.

    def _fail(self, code: int, reason: str) -> None:
        """Close because of what the client sent (or did not read): the consumer is told."""
        if self._state == _OPEN:
            logger.info("closing %s with %d: %s", self.path, code, reason)
            metrics.CLOSES.labels(str(code)).inc()
            self._close(code, reason)
        elif self._state == _CLOSING:
            self._end()

    def _close(self, code: int, reason: str) -> None:
        """Send the server's close frame, behind whatever the socket's buffer holds, and read on
        for the client's: a client that does not answer in :data:`CLOSE_TIMEOUT` seconds is
        dropped. The consumer is told at once (``websocket.disconnect`` with ``code``): nothing
        more can be sent, and what it holds (its topics) is released without waiting for a
        client that may never read its close frame."""
        self._queue({"type": "websocket.disconnect", "code": code})
        self._write_close(code, reason)
        self._state = _CLOSING
        self._close_timer = asyncio.get_running_loop().call_later(
            CLOSE_TIMEOUT, self.transport.abort
        )
        if self._reading_paused:
            self._reading_paused = False
            self.transport.resume_reading()

    def _write_close(self, code: int | None, reason: str) -> None:
        self._write_pongs()  # the pongs of the frames before it go first
        payload = b"" if code is None else Close(code, reason[:100]).serialize()
        self.transport.write(bytes((0x88, len(payload))) + payload)

    def _end(self) -> None:
        """The closing handshake is over: close the socket (the server closes TCP first).
        uvicorn's ``close()`` waits for the client to read the buffer first: a client that
        stopped reading is dropped :data:`CLOSE_TIMEOUT` seconds later."""
        self._state = _CLOSED
        self.transport.close()
        if self.transport.get_write_buffer_size():
            if self._close_timer is None:
                self._close_timer = asyncio.get_running_loop().call_later(
                    CLOSE_TIMEOUT, self.transport.abort
                )
        elif self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None

    def _close_now(self, code: int, reason: str) -> None:
        """Tell the consumer, send the close frame and close the socket, without waiting for
        the client's close frame (a shutdown, a dead peer)."""
        self._queue({"type": "websocket.disconnect", "code": code})
        self._write_close(code, reason)
        self._end()

    def shutdown(self) -> None:
        """uvicorn's graceful shutdown: close with 1012 (service restart)."""
        if self._state == _OPEN:
            self._close_now(CloseCode.SERVICE_RESTART, "")
        elif self._state == _HANDSHAKE:
            self._respond(500, b"", b"")

    def keepalive(self, tick: int, timeout_ticks: int) -> int | None:
        """Looked at by the keepalive, once per ``PING_INTERVAL``: ping a connection silent
        since the last look (the tick at which its pong is due is returned), and close one whose
        ping went unanswered (1011)."""
        if self._state != _OPEN:
            return None
        if self._alive:
            self._alive = False
            return None
        self._pings_out = tick
        self.transport.write(b"\x89\x00")
        return tick + timeout_ticks

    def pong_due(self, tick: int) -> None:
        """The pong of the ping sent at ``tick`` is due: close the connection if it never came."""
        if self._pings_out == tick and self._state == _OPEN:
            logger.info("closing %s: no pong in time (dead connection)", self.path)
            metrics.CLOSES.labels("1011").inc()
            self._close_now(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")  # a dead peer

    def connection_lost(self, exc: Exception | None) -> None:
        if self._state == _OPEN or self._state == _CLOSING or self._consumer is not None:
            code = self._close_code if self._close_code is not None else CloseCode.ABNORMAL
            self._queue({"type": "websocket.disconnect", "code": code})
        self._state = _CLOSED
        self._server_state.connections.discard(self)
        if self._slot is not None:
            _Keepalive.of(asyncio.get_running_loop()).remove(self, self._slot)
            self._slot = None
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self._uncount()
        self._writable.set()  # nothing waits for a socket that is gone

    def _uncount(self) -> None:
        """Give back the connection's place in the per-address count, once."""
        if self.counted is not None:
            release_address(OPEN_CONNECTIONS, self.counted)
            self.counted = None

    # The consumer.

    def _queue(self, event: dict[str, Any]) -> None:
        """Hand ``event`` to the consumer, after those waiting; once per connection for a
        disconnect."""
        events = self._events
        if event["type"] == "websocket.disconnect":
            if self._consumer is None and self._runner is None:
                return  # refused, or never got as far as a consumer: nothing to tell
            if self._told:
                return
            self._told = True
        events.append(event)
        if self._runner is None and self._consumer is not None:
            self._run()

    def _run(self) -> None:
        self._runner = asyncio.get_running_loop().create_task(self._handle_events())

    async def _handle_events(self) -> None:
        """Hand the waiting events to the consumer, yielding to the loop every
        :data:`EVENTS_PER_TURN`; ends when none wait (the next one starts it again)."""
        consumer, events = self._consumer, self._events
        assert consumer is not None
        handled = 0
        try:
            while events:
                event = events.pop(0)
                if self._reading_paused and len(events) < MAX_WAITING // 2:
                    self._resume_reading()
                try:
                    await consumer.dispatch(event)
                except StopConsumer:
                    events.clear()
                    self._consumer = None
                    return
                handled += 1
                if handled == EVENTS_PER_TURN:
                    handled = 0
                    await asyncio.sleep(0)
        except Exception:
            logger.exception("consumer on %s failed", self.path)
            self._fail_consumer()
        finally:
            self._runner = None

    def _resume_reading(self) -> None:
        self._reading_paused = False
        if self._state != _CLOSED:
            self.transport.resume_reading()
            if self._buffer:
                self._parse()

    def _fail_consumer(self) -> None:
        """The consumer raised (a bug): close with 1011 (HTTP 500 before the handshake), and
        release what it holds."""
        consumer, self._consumer = self._consumer, None
        self._events.clear()
        if self._state == _HANDSHAKE:
            self._respond(500, b"", b"")
        elif self._state == _OPEN:
            metrics.CLOSES.labels("1011").inc()
            self._close(CloseCode.INTERNAL_ERROR, "")
        if consumer is not None:
            asyncio.get_running_loop().create_task(consumer.release(CloseCode.INTERNAL_ERROR))


class _Keepalive:
    """The keepalive of every native connection of one event loop: one timer, which looks at a
    slot's worth of connections each ``PING_INTERVAL / KEEPALIVE_SLOTS`` seconds, so each
    connection is looked at once per interval (see :meth:`NativeWebSocket.keepalive`)."""

    _loops: ClassVar[dict[asyncio.AbstractEventLoop, _Keepalive]] = {}

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        config = get_config()
        self.loop = loop
        self.period = config.PING_INTERVAL / KEEPALIVE_SLOTS
        self.timeout_ticks = max(1, math.ceil(config.PING_TIMEOUT / self.period))
        self.slots: list[set[NativeWebSocket]] = [set() for _ in range(KEEPALIVE_SLOTS)]
        self.due: dict[int, list[NativeWebSocket]] = {}
        self.tick = 0
        self.next = 0  # the slot the next connection joins
        self.timer: asyncio.TimerHandle | None = None

    @classmethod
    def of(cls, loop: asyncio.AbstractEventLoop) -> _Keepalive:
        keepalive = cls._loops.get(loop)
        if keepalive is None:
            keepalive = cls._loops[loop] = cls(loop)
        return keepalive

    def add(self, connection: NativeWebSocket) -> int:
        """Look after ``connection`` from now on; its slot is returned (for :meth:`remove`)."""
        slot = self.next
        self.slots[slot].add(connection)
        self.next = (slot + 1) % KEEPALIVE_SLOTS
        if self.timer is None:
            self.timer = self.loop.call_later(self.period, self._tick)
        return slot

    def remove(self, connection: NativeWebSocket, slot: int) -> None:
        self.slots[slot].discard(connection)

    def _tick(self) -> None:
        self.tick += 1
        tick = self.tick
        for connection in self.due.pop(tick, ()):
            connection.pong_due(tick - self.timeout_ticks)
        for connection in list(self.slots[tick % KEEPALIVE_SLOTS]):
            due = connection.keepalive(tick, self.timeout_ticks)
            if due is not None:
                self.due.setdefault(due, []).append(connection)
        if any(self.slots) or self.due:
            self.timer = self.loop.call_later(self.period, self._tick)
        else:
            self.timer = None


def _header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The value of header ``name`` (lower case); several are joined with commas."""
    values = [value for key, value in headers if key == name]
    return b", ".join(values) if values else None


def _opening_key(scope: dict[str, Any]) -> bytes:
    """The client's ``Sec-WebSocket-Key`` of a valid opening handshake (RFC 6455 4.2.1)."""
    if scope["method"] != "GET":
        raise _Refused(400, "a WebSocket handshake is a GET")
    headers = scope["headers"]
    if _header(headers, b"sec-websocket-version") != b"13":
        raise _Refused(426, "unsupported WebSocket version", b"Sec-WebSocket-Version: 13\r\n")
    keys = [value for key, value in headers if key == b"sec-websocket-key"]
    try:
        if len(keys) != 1 or len(base64.b64decode(keys[0], validate=True)) != 16:
            raise ValueError
    except (ValueError, binascii.Error):
        raise _Refused(400, "missing or invalid Sec-WebSocket-Key") from None
    key: bytes = keys[0]
    return key.strip()


def _frame_problem(first: int, second: int, opcode: int, length: int) -> str | None:
    """What makes a client frame's header invalid (RFC 6455 5.2, 5.5), or None."""
    if not second & 0x80:
        return "an unmasked client frame"
    if first & 0x70:
        return "reserved bits set (no extension was negotiated)"
    if opcode in (0x1, 0x2, 0x0):
        return None
    if opcode in (0x8, 0x9, 0xA):
        if not first & 0x80:
            return "a fragmented control frame"
        return "a control frame over 125 bytes" if length > 125 else None
    return f"unknown opcode {opcode}"
