"""A faster path for uvicorn: write a broadcast's WebSocket frame once, to every socket.

A server-to-client WebSocket frame is not masked, so the bytes of a message's frame are the same
for every client. Through plain ASGI, though, each ``websocket.send`` makes the server frame the
message again, for every client, and costs a coroutine round trip. :class:`WebSocketProtocol`
(uvicorn's ``websockets-sansio`` protocol, plus one ASGI extension) lets Megaphone skip both:
it puts ``scope["extensions"]["megaphone.write_frame"]["write"]`` in every WebSocket scope, a
plain function that writes pre-framed bytes to the socket at once and returns True, or returns
False (writing nothing) when it cannot: before the handshake, after a close, or while the socket's
buffer is over its high-water mark. The caller then queues them in its bounded outbox, so
backpressure and the slow-client policy are unchanged; ``...["drain"]`` (a coroutine function that
returns once the buffer is below its low-water mark) tells the outbox's writer when to write all
it holds at once. If the socket still refuses (it is closing), the writer hands its ASGI events
(replies) to ASGI, which knows what a closing socket takes, and drops the pre-framed messages.

Other ASGI servers never offer the extension, and Megaphone works there through ASGI alone.
``manage.py serve`` selects this protocol (``ws=megaphone.transports.uvicorn:WebSocketProtocol``).
The extension is withheld when permessage-deflate is on, since compressed frames are per client.

It also closes a client that stopped reading (a slow consumer, 4408) without waiting for buffer
space that will never come: the close frame is queued behind what the client has not read, and a
client that has not completed the closing handshake :data:`CLOSE_TIMEOUT` seconds after the
server's close frame is dropped (``transport.abort()``; uvicorn's ``close()`` would wait forever
for it to read its buffer).

A second ``websocket.close`` is a no-op (uvicorn raises ``RuntimeError``): the server may have
closed a connection itself (a frame over the size limit, invalid UTF-8) while the application,
still handling frames received before, decided on a close of its own.

And it holds a fragmented message in one growing buffer: uvicorn keeps a list of fragments, which a
client could grow without bound with empty continuation frames (6 bytes each on the wire), since
they add nothing to the message size that ``ws_max_size`` bounds.

:class:`HttpProtocol` (uvicorn's httptools protocol) drops a client that has not sent a whole
request head (a WebSocket handshake, say) ``HANDSHAKE_TIMEOUT`` seconds after connecting or after
starting a request: uvicorn alone keeps a silent socket, or half a request, open forever. And the
handshake lines uvicorn logs never show a connection token (``?token=`` is redacted).
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame
from websockets.protocol import State

from .. import metrics
from ..conf import get_config
from .frames import WRITE_FRAME_EXTENSION

logger = logging.getLogger("megaphone.transports.uvicorn")

#: Seconds a client has to answer the server's close frame before its socket is dropped.
CLOSE_TIMEOUT = 10.0


class _LogNoise(logging.Filter):
    """Lines of uvicorn's error log that say nothing an operator can use, once per client:

    * uvicorn logs a whole traceback for every text message that is not UTF-8, so any client
      could flood the log with them; :meth:`WebSocketProtocol.handle_parser_exception` logs one
      line for that close (1007) instead;
    * ``websockets`` logs "connection open" and "connection closed", with no client, path or
      code, for every connection (uvicorn's ``[accepted]`` line and Megaphone's ``closed ...:
      code N`` line say who and why). At 1,000 connections per second they were half the log.
    """

    NOISE = frozenset(
        {"Invalid UTF-8 sequence received from client.", "connection open", "connection closed"}
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.NOISE


logging.getLogger("uvicorn.error").addFilter(_LogNoise())


class _Inbox:
    """The received events waiting for the ASGI application: what uvicorn's protocol uses of an
    ``asyncio.Queue`` (``put_nowait``, ``get``, ``empty``; one reader), without its four deques
    and their dictionaries (3.7 KiB per connection, idle or not)."""

    __slots__ = ("_head", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._head = 0  # items before it were taken (a list, not a deque: a deque is 760 bytes)
        self._waiter: asyncio.Future[None] | None = None

    def empty(self) -> bool:
        return self._head == len(self._items)

    def put_nowait(self, item: Any) -> None:
        self._items.append(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def get(self) -> Any:
        while self._head == len(self._items):
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        item = self._items[self._head]
        self._items[self._head] = None  # a big message is freed once taken, not when all are
        self._head += 1
        if self._head == len(self._items):
            self._items.clear()
            self._head = 0
        return item


class _Flag:
    """What uvicorn's protocol uses of an ``asyncio.Event`` (``set``, ``clear``, ``is_set``,
    ``wait``) for ``writable``, without a deque of waiters per connection (1.1 KiB): waiters
    exist only while the socket's buffer is full."""

    __slots__ = ("_set", "_waiters")

    def __init__(self) -> None:
        self._set = False
        self._waiters: list[asyncio.Future[None]] | None = None

    def is_set(self) -> bool:
        return self._set

    def set(self) -> None:
        self._set = True
        waiters, self._waiters = self._waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def clear(self) -> None:
        self._set = False

    async def wait(self) -> bool:
        if self._set:
            return True
        waiter = asyncio.get_running_loop().create_future()
        if self._waiters is None:
            self._waiters = []
        self._waiters.append(waiter)
        try:
            await waiter
        finally:
            if self._waiters is not None and waiter in self._waiters:
                self._waiters.remove(waiter)
        return True


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with the ``megaphone.write_frame`` extension, and
    a lighter received-events queue and ``writable`` flag (4.8 KiB less per connection)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = _Flag()  # type: ignore[assignment]
        self.writable.set()

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The ASGI task is scheduled but has not run yet: the scope can still gain a key.
        if self.response.status_code == 101 and not self.config.ws_per_message_deflate:
            self.scope["extensions"][WRITE_FRAME_EXTENSION] = {  # type: ignore[index]
                "write": self.write_frame,
                "drain": self.drain,
            }

    def write_frame(self, frame: bytes) -> bool:
        """Write a complete WebSocket frame now; False if the socket cannot take it now."""
        if (
            self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.writable.is_set()
            and self.conn.state is State.OPEN
        ):
            self.transport.write(frame)
            return True
        return False

    async def drain(self) -> None:
        """Return once the socket's buffer is below its low-water mark, or the client is gone."""
        await self.writable.wait()

    def keepalive_timeout(self) -> None:
        if not (self.close_sent or self.transport.is_closing()):
            logger.info("closing %s: no pong in time (dead connection)", self.client)
            metrics.CLOSES.labels("1011").inc()
        super().keepalive_timeout()

    def handle_parser_exception(self) -> None:
        # A frame the server refused before the application saw it: too big, not UTF-8, broken.
        if self.conn.close_sent is not None:
            code, reason = self.conn.close_sent.code, self.conn.close_sent.reason
            logger.info("closing %s with %d: %s", self.client, code, reason)
            metrics.CLOSES.labels(str(code)).inc()
        super().handle_parser_exception()

    def handle_cont(self, event: Frame) -> None:
        if event.data:
            if not isinstance(self.frames[0], bytearray):
                self.frames = [bytearray(b"".join(self.frames))]  # type: ignore[list-item]
            self.frames[0] += event.data
        if event.fin:
            self.frames = [bytes(self.frames[0])]
            self.send_receive_event_to_app()

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.close" and self.close_sent:
            # A close is final: the server closed already (it refused a frame, say) while the
            # application decided on its own close. uvicorn would raise; there is nothing to send.
            return
        closing = (
            message["type"] == "websocket.close"
            and self.handshake_complete
            and self.initial_response is None
            and not self.close_sent
            and not self.disconnected
        )
        if closing and not self.writable.is_set():
            # uvicorn would wait for the client to read its buffer first: never, for a client
            # that stopped reading. Queue the close frame behind what it has not read yet.
            code, reason = message.get("code", 1000), message.get("reason") or ""
            self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
            self.close_sent = True
            if self.read_paused:  # read on, to see the client's answering close frame
                self.read_paused = False
                self.transport.resume_reading()
        else:
            await super().send(message)
        if closing and self.close_sent:
            if self.close_timer is not None:
                self.close_timer.cancel()
            self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline on each request head (see the module docstring)."""

    _head_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a later request on a kept-alive connection
            self._arm()

    def on_headers_complete(self) -> None:
        self._disarm()
        super().on_headers_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def _arm(self) -> None:
        self._head_timer = self.loop.call_later(get_config().HANDSHAKE_TIMEOUT, self._timed_out)

    def _disarm(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _timed_out(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            logger.info("dropped %s: no complete request head in time", self.client)
            metrics.REFUSALS.labels("handshake_timeout").inc()
            self.transport.close()


_TOKEN = re.compile(r"([?&]token=)[^&\s\"]*")


class _RedactTokens(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                _TOKEN.sub(r"\1[redacted]", arg) if isinstance(arg, str) else arg
                for arg in record.args
            )
        return True


# uvicorn logs each handshake (uvicorn.error) and request (uvicorn.access) with its query string.
for _name in ("uvicorn.error", "uvicorn.access"):
    logging.getLogger(_name).addFilter(_RedactTokens())
