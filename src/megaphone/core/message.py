"""A published message, as it travels from the backend through the hub to the sockets.

A message is immutable once the backend has given it an offset. Each transport turns it into the
frame it sends (an ASGI ``websocket.send`` event, say) with an *encoder*; :meth:`Message.encoded`
runs each encoder at most once per message per process and hands every subscriber the same object.
That is the "encode once" rule: the cost of encoding does not grow with the number of subscribers.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Annotated, Any, Literal

from msgspec import Meta

Kind = Literal["text", "binary", "json"]

#: Longest ``msg_id`` (a publish's idempotency key), in characters, wherever one is taken: the
#: protocol, the HTTP API and ``publish()`` (``models.Message.msg_id`` has the same length).
#: Request ids share the limit.
MAX_MSG_ID_LENGTH = 64
#: What a ``msg_id`` may hold: no control character (U+0000-U+001F, U+007F-U+009F). An id is
#: stored in Redis, in SQL text columns (PostgreSQL refuses U+0000) and written to logs.
MSG_ID_PATTERN = r"^[^\x00-\x1f\x7f-\x9f]*$"
#: The ``msg_id`` type of every boundary (protocol frames, HTTP API bodies): 1 to
#: :data:`MAX_MSG_ID_LENGTH` characters matching :data:`MSG_ID_PATTERN`.
MsgId = Annotated[str, Meta(min_length=1, max_length=MAX_MSG_ID_LENGTH, pattern=MSG_ID_PATTERN)]
_MSG_ID = re.compile(MSG_ID_PATTERN)


def msg_id_problem(msg_id: object) -> str | None:
    """Why ``msg_id`` is not a :data:`MsgId` (for ``publish()``'s callers), or None."""
    if not isinstance(msg_id, str) or not 0 < len(msg_id) <= MAX_MSG_ID_LENGTH:
        return f"msg_id must be a string of 1 to {MAX_MSG_ID_LENGTH} characters"
    if not _MSG_ID.match(msg_id):
        return "msg_id must not hold a control character (U+0000-U+001F, U+007F-U+009F)"
    return None


Encoder = Callable[["Message"], Any]


class Message:
    """One message on one topic.

    ``payload`` is what was published: ``str`` for a text message, ``bytes`` for a binary one.
    ``offset`` is its position in the topic (1, 2, 3... with no gap within an ``epoch``); ``epoch``
    names the topic's current history and changes whenever that history is lost.
    ``time`` is when the backend accepted it (seconds since the epoch, float).

    ``json`` is True when a protocol client published a JSON value other than a string: the
    payload is then that value's JSON text, which raw clients receive as it is and protocol
    clients receive as the value (see docs/protocol.md). Backends store and carry this flag.
    """

    __slots__ = ("_encoded", "epoch", "json", "offset", "payload", "time", "topic")

    def __init__(
        self,
        topic: str,
        payload: str | bytes,
        offset: int,
        epoch: str,
        time: float,
        *,
        json: bool = False,
    ) -> None:
        self.topic = topic
        self.payload = payload
        self.offset = offset
        self.epoch = epoch
        self.time = time
        self.json = json
        self._encoded: dict[Encoder, Any] = {}

    @property
    def kind(self) -> Kind:
        if isinstance(self.payload, bytes):
            return "binary"
        return "json" if self.json else "text"

    @property
    def size(self) -> int:
        """Payload size in characters (text) or bytes (binary): the cost a queue accounts for."""
        return len(self.payload)

    def encoded(self, encoder: Encoder) -> Any:
        """``encoder(self)``, computed on first use and shared by every later caller."""
        try:
            return self._encoded[encoder]
        except KeyError:
            frame = self._encoded[encoder] = encoder(self)
            return frame

    def __repr__(self) -> str:
        return f"<Message {self.topic}#{self.offset} epoch={self.epoch} {self.kind} {self.size}>"


def raw_frame(message: Message) -> dict[str, Any]:
    """The ASGI event that sends ``message`` as the seed endpoint does: the payload as it was."""
    if isinstance(message.payload, bytes):
        return {"type": "websocket.send", "bytes": message.payload}
    return {"type": "websocket.send", "text": message.payload}
