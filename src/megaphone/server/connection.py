"""A connection as the hub sees it: a subscriber with an outbox and a writer.

:class:`Connection` is transport-neutral: it sends through any ``send`` coroutine function (an ASGI
``send``, say). The hub calls :meth:`Connection.deliver`, which encodes the message once for every
connection sharing the same encoder, queues the frame and returns at once. The writer task sends
queued frames in order; with the server's frame writer, everything queued goes out in one write as
soon as the socket can take more. If the outbox bound is crossed, ``on_slow`` is called once and
the transport closes the socket with 4408 (slow consumer).

The writer task exists only while frames wait: the first frame queued on an empty outbox starts
it, and it ends once the outbox is empty. A frame written straight to the socket (the server's
``write_frame``) needs no task at all, so an idle connection, or one the fast path keeps up with,
holds no task, no future and no coroutine.

**Coalescing.** On the fast path, the frames a connection is handed during one turn of the event
loop are held, then written with a single ``write_frame`` (one system call) when the turn ends: a
burst of messages costs one write per connection, not one per message, and nothing waits longer
than the turn that produced it. Order is kept: a frame queued behind held ones (a reply, or a
socket that cannot take more) first sends the held ones on, and if the socket cannot take them
they go to the outbox first.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from typing import Any

from megaphone.core import metrics
from megaphone.core.frames import FrameWriter, event_frame, framed
from megaphone.core.logs import get_logger
from megaphone.core.message import Encoder, Message
from megaphone.core.outbox import Outbox

logger = get_logger(__name__)

Send = Callable[[Any], Awaitable[None]]

# Per event loop: the connections holding frames until the end of the loop's current turn.
_holding: dict[asyncio.AbstractEventLoop, list[Connection]] = {}


def _write_held(loop: asyncio.AbstractEventLoop, started: float) -> None:
    """End of a loop turn: every connection writes the frames it held during it (since
    ``started``, the server's fan-out time of the turn's messages: ``megaphone_fanout_seconds``)."""
    for connection in _holding.pop(loop, ()):
        connection.write_held()
    metrics.FANOUT.observe(time.perf_counter() - started)


def _frame_bytes(queued: Any) -> bytes:
    """What the outbox holds, as frame bytes: ASGI events (replies, or messages that could not
    be written directly) are framed; held frames that could not be written already are."""
    return queued if queued.__class__ is bytes else event_frame(queued)


class Connection:
    __slots__ = (
        "_direct",
        "_drain_waiters",
        "_encoder",
        "_frame_encoder",
        "_held",
        "_held_more",
        "_on_slow",
        "_send",
        "_started",
        "_websocket",
        "_writer",
        "outbox",
    )

    def __init__(
        self,
        send: Send,
        encoder: Encoder,
        on_slow: Callable[[], None],
        *,
        max_messages: int,
        max_bytes: int,
        frame_writer: FrameWriter | None = None,
        websocket: bool = True,
    ) -> None:
        """``frame_writer``, when the server offers one (see :mod:`.uvicorn`), writes whole
        WebSocket frames at once; without it, every frame is an ASGI ``send``. ``websocket``:
        counted in the WebSocket connection metrics (not for another transport's, which counts
        its own)."""
        self._websocket = websocket
        self._send = send
        self._encoder = encoder
        self._direct = frame_writer
        self._frame_encoder = framed(encoder)
        # The frame held for the end of this loop turn (None: none), and the next ones. Frames
        # are the bytes every subscriber of a message shares, so holding one (the usual case)
        # allocates nothing, and each further one only grows a list: a fan-out to thousands
        # must not feed the garbage collector thousands of objects (a full collection of a
        # server's heap stalls every client for a few hundred milliseconds).
        self._held: bytes | None = None
        self._held_more: list[bytes] | None = None
        self._writer: asyncio.Task[None] | None = None  # running while frames wait or go out
        self._started = False
        # Futures of drained() callers, woken each time the queue empties or closes.
        self._drain_waiters: list[asyncio.Future[None]] | None = None
        self.outbox = Outbox(max_messages, max_bytes, self._overflowed)
        self._on_slow = on_slow

    def deliver(self, message: Message, encoder: Encoder | None = None) -> None:
        """Queue ``message``, encoded by ``encoder`` (by default the connection's; either way
        once per message, whatever the number of connections)."""
        if encoder is None:
            encoder, frame_encoder = self._encoder, self._frame_encoder
        else:
            frame_encoder = framed(encoder)
        if self._held is not None:
            if self._held_more is None:
                self._held_more = [message.encoded(frame_encoder)]
            else:
                self._held_more.append(message.encoded(frame_encoder))
        elif self._writer is None and self._started and self._direct is not None:
            # Nothing waits ahead of it (once started, the outbox holds frames only while the
            # writer runs): hold it for the single write at the end of this turn.
            self._held = message.encoded(frame_encoder)
            loop = asyncio.get_running_loop()
            holding = _holding.get(loop)
            if holding is None:
                holding = _holding[loop] = []
                loop.call_soon(_write_held, loop, time.perf_counter())
            holding.append(self)
        else:
            self._queue(message.encoded(encoder), message.size)

    def write_held(self) -> None:
        """Write the held frames in one write; queue them if the socket cannot take them now."""
        first, more = self._held, self._held_more
        if first is None:
            return
        self._held = self._held_more = None
        data = first if more is None else first + b"".join(more)
        assert self._direct is not None
        if not self._direct.write(data):
            self._queue(data, len(data))  # frames, for the writer's direct write

    def send_text(self, text: str) -> None:
        """Queue a text frame of this connection's own (a reply), behind what is queued."""
        self._queue({"type": "websocket.send", "text": text}, len(text))

    def _queue(self, frame: Any, size: int) -> None:
        """Queue ``frame`` behind the others (held frames first), and start the writer if none
        runs (once started)."""
        if self._held is not None:
            self.write_held()
        if self.outbox.put(frame, size) and self._writer is None and self._started:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def drained(self, max_messages: int, max_bytes: int) -> None:
        """Return once at most ``max_messages`` frames and ``max_bytes`` bytes wait in the
        outbox, or it is closed.

        Event-driven, no timer: the caller is woken when the writer takes what is queued (the
        outbox empties a batch at a time) or the outbox closes, and checks again, since frames
        may have been queued meanwhile. A client that stops reading makes this wait until the
        connection closes: bound it if that matters.
        """
        outbox = self.outbox
        while not outbox.closed and (
            len(outbox) > max_messages or outbox.pending_bytes > max_bytes
        ):
            waiter = asyncio.get_running_loop().create_future()
            if self._drain_waiters is None:
                self._drain_waiters = [waiter]
            else:
                self._drain_waiters.append(waiter)
            await waiter

    def _wake_drained(self) -> None:
        """The outbox emptied or closed: wake every :meth:`drained` caller."""
        waiters, self._drain_waiters = self._drain_waiters, None
        for waiter in waiters or ():
            if not waiter.done():
                waiter.set_result(None)

    def _overflowed(self, dropped: int) -> None:
        self._wake_drained()
        metrics.SLOW_DISCONNECTS.inc()
        metrics.DROPS.labels("slow_consumer").inc(dropped)
        self._on_slow()

    def start(self) -> None:
        """Start sending; frames delivered before this call were queued and go first."""
        self._started = True
        if self._websocket:
            metrics.CONNECTIONS.inc()
            metrics.CONNECTIONS_ACCEPTED.inc()
        if self.outbox:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def flush(self) -> None:
        """Return once every frame delivered so far has been handed to the socket (none are left
        held or queued), or the outbox was closed. A client that stops reading makes this wait
        forever: bound it."""
        if self._held is not None:
            self.write_held()
        while (writer := self._writer) is not None and not self.outbox.closed:
            await asyncio.wait({writer})  # unlike awaiting it, never cancels the writer

    async def close(self) -> None:
        """Stop sending: drop what is queued and stop the writer, even if a send is stuck."""
        self._held = self._held_more = None
        self.outbox.close()
        self._wake_drained()
        if self._started:
            self._started = False
            if self._websocket:
                metrics.CONNECTIONS.dec()
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write(self) -> None:
        """Send batches until the outbox is empty, then end (the next queued frame restarts it)."""
        send, direct = self._send, self._direct
        try:
            while True:
                if direct is not None:
                    # Once the socket can take more, everything queued by then goes in one
                    # write: a client that fell behind costs a system call per batch, not per
                    # frame.
                    await direct.drain()
                batch = self.outbox.take_batch()
                if not batch:
                    break
                if self._drain_waiters is not None:
                    self._wake_drained()
                if direct is not None and direct.write(b"".join(map(_frame_bytes, batch))):
                    continue
                for frame in batch:  # closing, or no direct writes: plain ASGI sends
                    if frame.__class__ is not bytes:  # frames only ever go out directly
                        await send(frame)
        except Exception as exc:  # the peer is gone; the transport sees the close itself
            logger.debug("send failed, writer stops: %r", exc)
            self.outbox.close()
            self._wake_drained()
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
