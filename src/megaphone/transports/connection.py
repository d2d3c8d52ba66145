"""A connection as the hub sees it: a subscriber with an outbox and a writer.

:class:`Connection` is transport-neutral: it sends through any ``send`` coroutine function (an ASGI
``send``, say). The hub calls :meth:`Connection.deliver`, which encodes the message once for every
connection sharing the same encoder, queues the frame and returns at once. The writer task sends
queued frames in order; when a burst has queued several, it sends them back to back with no
wake-up in between. If the outbox bound is crossed, ``on_slow`` is called once and the transport
closes the socket with 4408 (slow consumer).

The writer task exists only while frames wait: the first frame queued on an empty outbox starts
it, and it ends once the outbox is empty. A frame written straight to the socket (the server's
``write_frame``) needs no task at all, so an idle connection, or one the fast path keeps up with,
holds no task, no future and no coroutine.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from .. import metrics
from ..message import Encoder, Message
from ..outbox import Outbox
from .frames import framed

logger = logging.getLogger("megaphone.connection")

Send = Callable[[Any], Awaitable[None]]


class Connection:
    __slots__ = (
        "_encoder",
        "_frame_encoder",
        "_on_slow",
        "_send",
        "_started",
        "_write_frame",
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
        write_frame: Callable[[bytes], bool] | None = None,
    ) -> None:
        """``write_frame``, when the server offers it (see :mod:`.uvicorn`), writes a whole
        WebSocket frame at once or returns False; frames then go through the outbox."""
        self._send = send
        self._encoder = encoder
        self._write_frame = write_frame
        self._frame_encoder = framed(encoder)
        self._writer: asyncio.Task[None] | None = None  # running while frames wait or go out
        self._started = False
        self.outbox = Outbox(max_messages, max_bytes, self._overflowed)
        self._on_slow = on_slow

    def deliver(self, message: Message) -> None:
        # Straight to the socket when nothing is waiting ahead of this message; else queue it.
        if (
            self._writer is None
            and self._write_frame is not None
            and not self.outbox
            and self._write_frame(message.encoded(self._frame_encoder))
        ):
            return
        self._queue(message.encoded(self._encoder), message.size)

    def deliver_as(self, message: Message, encoder: Encoder) -> None:
        """:meth:`deliver` with another encoder than the connection's (still encoded once)."""
        if (
            self._writer is None
            and self._write_frame is not None
            and not self.outbox
            and self._write_frame(message.encoded(framed(encoder)))
        ):
            return
        self._queue(message.encoded(encoder), message.size)

    def send_text(self, text: str) -> None:
        """Queue a text frame of this connection's own (a reply), behind what is queued."""
        self._queue({"type": "websocket.send", "text": text}, len(text))

    def _queue(self, frame: Any, size: int) -> None:
        """Queue ``frame`` behind the others, and start the writer if none runs (once started)."""
        if self.outbox.put(frame, size) and self._writer is None and self._started:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    def _overflowed(self, dropped: int) -> None:
        metrics.SLOW_DISCONNECTS.inc()
        metrics.DROPS.labels("slow_consumer").inc(dropped)
        self._on_slow()

    def start(self) -> None:
        """Start sending; frames delivered before this call were queued and go first."""
        self._started = True
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_ACCEPTED.inc()
        if self.outbox:
            self._writer = asyncio.get_running_loop().create_task(self._write())

    async def close(self) -> None:
        """Stop sending: drop what is queued and stop the writer, even if a send is stuck."""
        self.outbox.close()
        if self._started:
            self._started = False
            metrics.CONNECTIONS.dec()
        writer, self._writer = self._writer, None
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write(self) -> None:
        """Send batches until the outbox is empty, then end (the next queued frame restarts it)."""
        send = self._send
        try:
            while batch := self.outbox.take_batch():
                for frame in batch:
                    await send(frame)
        except Exception as exc:  # the peer is gone; the transport sees the close itself
            logger.debug("send failed, writer stops: %r", exc)
            self.outbox.close()
        finally:
            if self._writer is asyncio.current_task():
                self._writer = None
