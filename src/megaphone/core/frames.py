"""WebSocket framing (RFC 6455, section 5.2) of outgoing ASGI events, for writing frames directly.

A server's frames are not masked, so the bytes of one message's frame are the same for every
client; :func:`framed` turns any message encoder into one that yields those bytes, so that
:meth:`Message.encoded` computes them once per message and per encoder.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from megaphone.core.message import Encoder, Message

#: The ASGI extension through which a server offers to write whole frames (see ``.uvicorn``).
WRITE_FRAME_EXTENSION = "megaphone.write_frame"


class FrameWriter(Protocol):
    """What a server offers through the extension, for one connection.

    ``write(frame)`` writes complete frames at once and returns True, or writes nothing and
    returns False when the socket cannot take them now (before the handshake, after a close, or
    while its buffer is over the high-water mark). ``drain()`` returns once the buffer is below
    the low-water mark again (or the connection is gone: ``write`` then says so).
    """

    def write(self, frame: bytes, /) -> bool: ...

    def drain(self) -> Awaitable[None]: ...


class OfferedWriter(NamedTuple):
    """A :class:`FrameWriter` made of the two functions an ASGI server offers (uvicorn's)."""

    write: Callable[[bytes], bool]
    drain: Callable[[], Awaitable[None]]


def frame_writer(scope: dict[str, Any]) -> FrameWriter | None:
    """The server's frame writer for this connection, if it offers one: the extension's value
    is a dict of its two functions (``{"write": ..., "drain": ...}``, as uvicorn's protocol
    offers them), or an object that is a :class:`FrameWriter` itself (the native transport's
    connection: no dict and no bound methods per connection)."""
    offer = scope.get("extensions", {}).get(WRITE_FRAME_EXTENSION)
    if not offer:
        return None
    if isinstance(offer, dict):
        return OfferedWriter(offer["write"], offer["drain"])
    return offer  # type: ignore[no-any-return]


def event_frame(event: dict[str, Any]) -> bytes:
    """The final, unmasked, uncompressed frame of an ASGI ``websocket.send`` event."""
    data: bytes | None = event.get("bytes")
    if data is None:
        text: str = event["text"]
        opcode, data = 0x81, text.encode()  # strict: every text entered valid
    else:
        opcode = 0x82
    length = len(data)
    if length < 126:
        header = bytes((opcode, length))
    elif length < 1 << 16:
        header = bytes((opcode, 126)) + length.to_bytes(2, "big")
    else:
        header = bytes((opcode, 127)) + length.to_bytes(8, "big")
    return header + data


_framed: dict[Encoder, Encoder] = {}


def framed(encoder: Encoder) -> Encoder:
    """The encoder giving the frame bytes of ``encoder``'s event; the same object every call."""
    try:
        return _framed[encoder]
    except KeyError:

        def frame(message: Message) -> bytes:
            return event_frame(message.encoded(encoder))

        frame.__qualname__ = f"framed({getattr(encoder, '__qualname__', encoder)})"
        return _framed.setdefault(encoder, frame)
