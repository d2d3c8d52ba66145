"""A connection as the hub sees it: a subscriber with an outbox and a writer.

:class:`Connection` is transport-neutral: it sends through any ``send`` coroutine function (an ASGI
``send``, say). The hub calls :meth:`Connection.deliver`, which encodes the message once for every
connection sharing the same encoder, queues the frame and returns at once. The writer task sends
queued frames in order; when a burst has queued several, it sends them back to back with no
wake-up in between. If the outbox bound is crossed, ``on_slow`` is called once and the transport
closes the socket with 4408 (slow consumer).
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
        "_busy",
        "_encoder",
        "_frame_encoder",
        "_on_slow",
        "_send",
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
        self._writer: asyncio.Task[None] | None = None
        self._busy = False  # the writer holds a batch it has not finished sending
        self.outbox = Outbox(max_messages, max_bytes, self._overflowed)
        self._on_slow = on_slow

    def deliver(self, message: Message) -> None:
        # Straight to the socket when nothing is waiting ahead of this message; else queue it.
        if (
            self._write_frame is not None
            and not self._busy
            and not self.outbox
            and self._write_frame(message.encoded(self._frame_encoder))
        ):
            return
        self.outbox.put(message.encoded(self._encoder), message.size)

    def deliver_as(self, message: Message, encoder: Encoder) -> None:
        """:meth:`deliver` with another encoder than the connection's (still encoded once)."""
        if (
            self._write_frame is not None
            and not self._busy
            and not self.outbox
            and self._write_frame(message.encoded(framed(encoder)))
        ):
            return
        self.outbox.put(message.encoded(encoder), message.size)

    def send_text(self, text: str) -> None:
        """Queue a text frame of this connection's own (a reply), behind what is queued."""
        self.outbox.put({"type": "websocket.send", "text": text}, len(text))

    def _overflowed(self, dropped: int) -> None:
        metrics.SLOW_DISCONNECTS.inc()
        metrics.DROPS.labels("slow_consumer").inc(dropped)
        self._on_slow()

    def start(self) -> None:
        """Start sending; frames delivered before this call were queued and go first."""
        self._writer = asyncio.get_running_loop().create_task(self._write())
        metrics.CONNECTIONS.inc()
        metrics.CONNECTIONS_ACCEPTED.inc()

    async def close(self) -> None:
        """Stop sending: drop what is queued and stop the writer, even if a send is stuck."""
        self.outbox.close()
        writer = self._writer
        if writer is not None:
            self._writer = None
            metrics.CONNECTIONS.dec()
        if writer is not None and not writer.done():
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer

    async def _write(self) -> None:
        send = self._send
        while batch := await self.outbox.get_batch():
            self._busy = True
            for frame in batch:
                try:
                    await send(frame)
                except Exception as exc:  # the peer is gone; the transport sees the close itself
                    logger.debug("send failed, writer stops: %r", exc)
                    self.outbox.close()
                    return
            self._busy = False
