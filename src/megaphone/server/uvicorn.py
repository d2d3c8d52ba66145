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
``manage.py serve`` selects this protocol (``ws=megaphone.server.uvicorn:WebSocketProtocol``).
The extension is withheld when permessage-deflate is on, since compressed frames are per client.

It also closes a client that stopped reading (a slow consumer, 4408) without waiting for buffer
space that will never come: the close frame is queued behind what the client has not read, and a
client that has not completed the closing handshake :data:`CLOSE_TIMEOUT` seconds after the
server's close frame is dropped (``transport.abort()``; uvicorn's ``close()`` would wait forever
for it to read its buffer).

It answers a close frame that comes in the middle of a fragmented message as it answers any
close frame, by echoing it (RFC 6455 5.4: control frames may come between fragments; 5.5.1: a
close is answered with a close), and drops the unfinished message: ``websockets`` fails such a
connection with 1002 ("incomplete fragmented message"), a protocol error the client did not make
(Autobahn|Testsuite case 7.1.5).

It bounds what a flooding client costs, on both sides of the socket. Received bytes go to the
WebSocket parser :data:`PARSE_SLICE` bytes at a time; once the application has received events
it has not taken, the rest waits unparsed (raw bytes, not events) and the socket is not read
until the application has taken them (uvicorn parses a whole read, up to 256 KiB: 40,000 empty
frames). And the pongs that answer a client's WebSocket pings count toward the outbox bound, as
the application's own frames do: those written while the socket's buffer is over its high-water
mark (the client is not reading) are counted, and past ``OUTBOX_MAX_MESSAGES`` pongs or
``OUTBOX_MAX_BYTES`` bytes the client is closed as a slow consumer (4408). uvicorn writes each
pong at once, whatever the buffer holds: a client pinging without reading grew it without bound.
After the server's close frame, pongs are dropped (nothing may follow a close frame). And a
connection the server closes for any reason (a dead connection, a broken frame, the client's own
close) while its buffer holds what the client has not read is dropped :data:`CLOSE_TIMEOUT`
seconds later: uvicorn would wait for the client to read it, forever.

A second ``websocket.close`` is a no-op (uvicorn raises ``RuntimeError``): the server may have
closed a connection itself (a frame over the size limit, invalid UTF-8) while the application,
still handling frames received before, decided on a close of its own.

And it holds a fragmented message in one growing buffer: uvicorn keeps a list of fragments, which a
client could grow without bound with empty continuation frames (6 bytes each on the wire), since
they add nothing to the message size that ``ws_max_size`` bounds.

:class:`HttpProtocol` (uvicorn's httptools protocol) drops a client that has not sent a whole
request head (a WebSocket handshake, say) ``HANDSHAKE_TIMEOUT`` seconds after connecting or after
starting a request: uvicorn alone keeps a silent socket, or half a request, open forever. And the
lines uvicorn logs are escaped and never show a secret of the query string, such as a connection
token, however it is encoded (``?%74oken=`` is redacted too; see :mod:`megaphone.core.logs`).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.frames import Frame, Opcode
from websockets.protocol import State
from websockets.server import ServerProtocol

from megaphone.conf import get_config
from megaphone.core import metrics
from megaphone.core.closecodes import CloseCode
from megaphone.core.frames import WRITE_FRAME_EXTENSION
from megaphone.core.logs import get_logger

logger = get_logger(__name__)

#: Seconds a client has to answer the server's close frame before its socket is dropped.
CLOSE_TIMEOUT = 10.0
#: Received bytes handed to the WebSocket parser at once; between two slices, the protocol stops
#: if the application has events waiting. Events waiting for it are therefore at most what one
#: slice holds (a frame is at least 6 bytes: about 700 events of a few hundred bytes each).
PARSE_SLICE = 4096


def pongs_over_bound(count: int, size: int) -> bool:
    """Whether ``count`` pongs of ``size`` bytes in all, written since the socket's buffer went
    over its high-water mark (the client is not reading), cross the outbox bound: then the client
    is closed as a slow consumer (4408), as it would be for the application's own frames."""
    config = get_config()
    return count > config.OUTBOX_MAX_MESSAGES or size > config.OUTBOX_MAX_BYTES


class _Inbox:
    """The received events waiting for the ASGI application: what uvicorn's protocol uses of an
    ``asyncio.Queue`` (``put_nowait``, ``get``, ``empty``; one reader), without its four deques
    and their dictionaries (3.7 KiB per connection, idle or not)."""

    __slots__ = ("_head", "_items", "_waiter")

    def __init__(self) -> None:
        self._items: list[Any] = []
        self._head = 0  # items before it were taken (a list, not a deque: a deque is 760 bytes)
        self._waiter: asyncio.Future[None] | None = None

    def __len__(self) -> int:
        """Events waiting to be taken."""
        return len(self._items) - self._head

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


class Flag:
    """What uvicorn's protocol uses of an ``asyncio.Event`` (``set``, ``clear``, ``is_set``,
    ``wait``) for ``writable``, without a deque of waiters per connection (1.1 KiB): waiters
    exist only while the socket's buffer is full. The native transport's ``writable`` too."""

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


class _ServerProtocol(ServerProtocol):
    """``websockets``' sans-I/O server protocol, except that a close frame received in the middle
    of a fragmented message closes the connection normally: it is echoed, and the unfinished
    message is never delivered. A close frame that is itself invalid still fails the connection
    (1002, or 1007 for a reason that is not UTF-8), as ``websockets`` parses it first."""

    def recv_frame(self, frame: Frame) -> None:
        if frame.opcode is Opcode.CLOSE:
            self.current_size = None  # the message being received ends here, undelivered
        super().recv_frame(frame)


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with the ``megaphone.write_frame`` extension, a
    lighter received-events queue and ``writable`` flag (4.8 KiB less per connection), the
    handshake's request and response dropped once it is over (4.5 KiB), a
    close frame between fragments answered as any other (see :class:`_ServerProtocol`), and
    bounds on what a client that floods it without reading costs (see the module docstring)."""

    # Received bytes not handed to the parser yet (from _unparsed_at on): the application has
    # events to take first.
    _unparsed = b""
    _unparsed_at = 0
    # Pongs written (and their bytes) since the socket's buffer went over its high-water mark.
    _pongs_unread = 0
    _pong_bytes_unread = 0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # uvicorn's parser, as it configured it (extensions, size limits, logger), made ours:
        # _ServerProtocol adds one method and no state, so the object need not be built twice
        # (a websockets protocol costs two getLogger calls and a parser generator).
        self.conn.__class__ = _ServerProtocol
        # In place of uvicorn's asyncio.Queue and asyncio.Event: what it uses of them.
        self.queue = _Inbox()  # type: ignore[assignment]
        self.writable = Flag()  # type: ignore[assignment]
        self.writable.set()

    def data_received(self, data: bytes) -> None:
        if self._unparsed:  # reading went on while closing, to see the client's close frame
            data = self._unparsed[self._unparsed_at :] + data
            self._unparsed = b""
        self._parse(data, 0)

    def _parse(self, data: bytes, start: int) -> None:
        """Hand ``data[start:]`` to the parser a slice at a time, while the application keeps
        up: once it has an event to take (and no close frame was sent: then nothing more is
        queued for it), keep the rest for :meth:`receive` and stop reading the socket."""
        size = len(data)
        while True:
            chunk = data if size <= PARSE_SLICE else data[start : start + PARSE_SLICE]
            super().data_received(chunk)
            start += PARSE_SLICE
            if start >= size or self.transport.is_closing():
                return
            if not self.close_sent and not self.queue.empty():
                self._unparsed, self._unparsed_at = data, start
                if not self.read_paused:
                    self.read_paused = True
                    self.transport.pause_reading()
                return

    def _parse_unparsed(self) -> None:
        data, self._unparsed = self._unparsed, b""
        self._parse(data, self._unparsed_at)

    async def receive(self) -> Any:
        message = await self.queue.get()
        if self.queue.empty():
            if self._unparsed:
                self._parse_unparsed()
            if self.read_paused and self.queue.empty() and not self._unparsed:
                self.read_paused = False
                self.transport.resume_reading()
        return message

    def handle_ping(self) -> None:
        """Write the pongs the parser queued; while the client is not reading, count them
        toward the outbox bound, and close it as a slow consumer past the bound."""
        pongs = b"".join(self.conn.data_to_send())
        if self.close_sent:
            return  # nothing follows the server's close frame
        if not self.writable.is_set():
            self._pongs_unread += 1
            self._pong_bytes_unread += len(pongs)
            if pongs_over_bound(self._pongs_unread, self._pong_bytes_unread):
                logger.warning("closing a slow consumer %s: pongs unread", self.client)
                metrics.SLOW_DISCONNECTS.inc()
                metrics.CLOSES.labels(str(CloseCode.SLOW_CONSUMER)).inc()
                self._close_behind(CloseCode.SLOW_CONSUMER, "slow consumer")
                return
        self.transport.write(pongs)

    def resume_writing(self) -> None:
        super().resume_writing()
        self._pongs_unread = self._pong_bytes_unread = 0

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The ASGI task is scheduled but has not run yet: the scope can still gain a key.
        if self.response.status_code == 101 and not self.config.ws_per_message_deflate:
            self.scope["extensions"][WRITE_FRAME_EXTENSION] = {
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
        self._drop_if_stuck()

    def handle_parser_exception(self) -> None:
        # A frame the server refused before the application saw it: too big, not UTF-8, broken.
        if self.conn.close_sent is not None:
            code, reason = self.conn.close_sent.code, self.conn.close_sent.reason
            logger.info("closing %s with %d: %s", self.client, code, reason)
            metrics.CLOSES.labels(str(code)).inc()
        super().handle_parser_exception()
        self._drop_if_stuck()

    def handle_close(self, event: Frame) -> None:
        super().handle_close(event)
        self._drop_if_stuck()

    def on_task_complete(self, task: asyncio.Task[None]) -> None:
        super().on_task_complete(task)
        self._drop_if_stuck()

    def _drop_if_stuck(self) -> None:
        """uvicorn's ``transport.close()`` waits for the client to read what the socket's buffer
        holds first: for a client that stopped reading, forever, and the connection (its
        application task too) is never released. Drop it :data:`CLOSE_TIMEOUT` seconds later."""
        if (
            self.close_timer is None  # else the server's close frame has its own deadline
            and self.transport.is_closing()
            and self.transport.get_write_buffer_size()
        ):
            self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)

    def handle_cont(self, event: Frame) -> None:
        if event.data:
            # uvicorn annotates frames as list[bytes]; it holds any bytes-like, this bytearray too.
            if not isinstance(self.frames[0], bytearray):  # type: ignore[unreachable]
                self.frames = [bytearray(b"".join(self.frames))]  # type: ignore[list-item]
            self.frames[0] += event.data
        if event.fin:
            self.frames = [bytes(self.frames[0])]
            self.send_receive_event_to_app()

    async def send(self, message: Any) -> None:
        if message["type"] == "websocket.close" and self.close_sent:
            # A close is final: the server closed already (it refused a frame, or closed a slow
            # consumer itself) while the application decided on its own close. uvicorn would
            # raise; there is nothing to send.
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
            self._close_behind(message.get("code", 1000), message.get("reason") or "")
        elif closing:
            await super().send(message)
            if self.close_sent:
                self._read_until_closed()
        else:
            await super().send(message)
            request = getattr(self, "request", None)
            if self.handshake_complete and request is not None:
                # The handshake is over (accepted or refused): nothing reads the request or
                # the response again (the scope has its own copy of the headers). uvicorn
                # keeps both for the life of the connection, and so does the parser's
                # suspended generator (the request): their headers are emptied and dropped
                # (4.5 KiB each idle connection).
                request.headers.clear()
                self.request = self.response = None  # type: ignore[assignment]

    def _close_behind(self, code: int, reason: str) -> None:
        """Send a close frame now, behind whatever the socket's buffer holds, and tell the
        application the connection is closed (``websocket.disconnect`` with ``code``)."""
        self.queue.put_nowait({"type": "websocket.disconnect", "code": code, "reason": reason})
        if self.conn.state is State.OPEN:
            self.conn.send_close(code, reason)
            self.transport.write(b"".join(self.conn.data_to_send()))
        self.close_sent = True
        self._read_until_closed()

    def _read_until_closed(self) -> None:
        """After the server's close frame: read on (what waits unparsed too), to see the client's
        answering close frame; drop the client :data:`CLOSE_TIMEOUT` seconds later."""
        if self.close_timer is not None:
            self.close_timer.cancel()
        self.close_timer = self.loop.call_later(CLOSE_TIMEOUT, self.transport.abort)
        if self.read_paused:
            self.read_paused = False
            self.transport.resume_reading()
        if self._unparsed:
            self._parse_unparsed()


class HttpProtocol(HttpToolsProtocol):
    """uvicorn's HTTP protocol with a deadline on each request head (see the module docstring)."""

    _head_timer: asyncio.TimerHandle | None = None

    # asyncio.Transport, not BaseTransport: uvicorn's own override narrows it so.
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
