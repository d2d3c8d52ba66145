"""A faster path for uvicorn: write a broadcast's WebSocket frame once, to every socket.

A server-to-client WebSocket frame is not masked, so the bytes of a message's frame are the same
for every client. Through plain ASGI, though, each ``websocket.send`` makes the server frame the
message again, for every client, and costs a coroutine round trip. :class:`WebSocketProtocol`
(uvicorn's ``websockets-sansio`` protocol, plus one ASGI extension) lets Megaphone skip both:
it puts ``scope["extensions"]["megaphone.write_frame"]["write"]`` in every WebSocket scope, a
plain function that writes pre-framed bytes to the socket at once and returns True, or returns
False (writing nothing) when it cannot: before the handshake, after a close, or while the socket's
buffer is over its high-water mark. The caller then falls back to ordinary ASGI sends through its
bounded outbox, so backpressure and the slow-client policy are unchanged.

Other ASGI servers never offer the extension, and Megaphone works there through ASGI alone.
``manage.py serve`` selects this protocol (``ws=megaphone.transports.uvicorn:WebSocketProtocol``).
The extension is withheld when permessage-deflate is on, since compressed frames are per client.
"""

from __future__ import annotations

from typing import Any

from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from websockets.protocol import State

from .frames import WRITE_FRAME_EXTENSION


class WebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's sans-I/O WebSocket protocol with the ``megaphone.write_frame`` extension."""

    def handle_connect(self, event: Any) -> None:
        super().handle_connect(event)
        # The ASGI task is scheduled but has not run yet: the scope can still gain a key.
        if self.response.status_code == 101 and not self.config.ws_per_message_deflate:
            self.scope["extensions"][WRITE_FRAME_EXTENSION] = {"write": self.write_frame}  # type: ignore[index]

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
