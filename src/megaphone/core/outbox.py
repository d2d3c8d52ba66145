"""The outbox: one bounded queue of frames per connection, between the hub and the socket.

The hub puts frames in without waiting; the connection's writer takes them out in order and sends
them. The bound (messages and bytes) is the slow-client policy: a ``put`` that would cross it
fails, the outbox closes and drops what it held, and the connection is then closed with close code
4408 (slow consumer). A slow client therefore never grows the server's memory past the bound and
never slows the hub or the other clients; it can reconnect and recover from its last offset.

The bound counts what waits in the queue. The writer takes a whole batch at once (so a burst goes
out back to back); while it sends that batch, new frames queue up to the bound again. Memory held
for one connection is therefore at most twice the bound, plus the server's socket buffer.

The outbox does no waiting itself: its owner (:class:`~megaphone.server.connection.Connection`)
starts a writer when a put finds no writer running, so an idle connection holds no task, no future
and no queue buffer (an empty outbox is a few small objects).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


class Outbox:
    __slots__ = (
        "_bytes",
        "_closed",
        "_frames",
        "_on_overflow",
        "max_bytes",
        "max_messages",
        "overflowed",
    )

    def __init__(
        self,
        max_messages: int,
        max_bytes: int,
        on_overflow: Callable[[int], None] | None = None,
    ) -> None:
        """``on_overflow(dropped)`` is called once, when a put first crosses the bound, with the
        number of frames dropped (those queued, and the one refused)."""
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._on_overflow = on_overflow
        self.overflowed = False
        self._frames: list[tuple[Any, int]] = []
        self._bytes = 0
        self._closed = False

    def __len__(self) -> int:
        return len(self._frames)

    @property
    def pending_bytes(self) -> int:
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._closed

    def put(self, frame: Any, size: int) -> bool:
        """Queue ``frame`` (``size`` bytes). Return False, and close, if the bound is crossed.

        A put on a closed outbox is dropped and returns False.
        """
        if self._closed:
            return False
        if len(self._frames) >= self.max_messages or self._bytes + size > self.max_bytes:
            self.overflowed = True
            dropped = len(self._frames) + 1
            self.close()
            if self._on_overflow is not None:
                self._on_overflow(dropped)
            return False
        self._frames.append((frame, size))
        self._bytes += size
        return True

    def take_batch(self) -> list[Any]:
        """Every queued frame, oldest first, and the queue emptied; an empty list when nothing
        is queued, and always once the outbox is closed: the writer's signal to stop."""
        frames = self._frames
        if not frames:
            return []
        self._frames = []
        self._bytes = 0
        return [frame for frame, _ in frames]

    def close(self) -> None:
        """Drop every queued frame; every later put is refused."""
        self._closed = True
        self._frames = []
        self._bytes = 0
