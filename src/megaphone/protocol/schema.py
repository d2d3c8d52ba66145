"""The JSON protocol of the multiplexed endpoint ``/ws/connect/``: parsing and frame encoding.

Pure: no sockets, no Django, no awaiting. :func:`parse` turns one text frame from a client into a
request object or raises :class:`ProtocolError` with a stable error code; the ``*_frame`` and
``encode_*`` functions build the text of server frames. The specification, with an example of
every frame, is ``docs/protocol.md``; keep the two in step.

Message frames are encoded once per message per process: :func:`message_json` (the frame's text)
and :func:`message_event` (the ASGI event around it) are *encoders* for
:meth:`megaphone.core.message.Message.encoded`, so every protocol subscriber of a topic is handed
the
same event dict, and a history reply splices the same texts.
"""

from __future__ import annotations

import base64
import binascii
import builtins
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeGuard

from megaphone.core.decoding import InvalidText, check_text, decode_json, encode_json, utf8_size
from megaphone.core.message import Message
from megaphone.core.topics import InvalidTopic, validate_topic

#: The protocol version a server announces in its ``connected`` frame.
VERSION = 1

#: Request ids: an integer in 0 .. 2**53 - 1 (exact in JavaScript) or a string of at most this
#: many characters. ``msg_id`` (publish idempotency key) has the same string limit.
MAX_ID_LENGTH = 64
MAX_INT_ID = 2**53 - 1
#: Largest ``info`` (client info for presence), in bytes of its JSON text.
MAX_INFO_SIZE = 1024
#: Largest ``limit`` of a ``history`` request, and its default.
MAX_HISTORY_LIMIT = 1000
DEFAULT_HISTORY_LIMIT = 100
#: Prefix of the internal topics carrying a topic's join/leave events. ``$`` cannot start a
#: topic name, so no client can subscribe to or publish on them directly.
PRESENCE_PREFIX = "$presence:"


class Code:
    """Stable error codes of ``error`` frames (and of ``unsubscribed`` frames)."""

    BAD_REQUEST = "bad_request"  # not JSON, not an object, a field missing or of the wrong type
    UNKNOWN_OP = "unknown_op"  # "op" names no operation of this protocol version
    INVALID_TOPIC = "invalid_topic"  # a topic name outside the rules of megaphone.core.topics
    TOO_LARGE = "too_large"  # info or an id over its size limit
    FORBIDDEN = "forbidden"  # the topic does not allow this (publish, presence)
    NOT_SUBSCRIBED = "not_subscribed"  # unsubscribe from a topic this connection is not on
    ALREADY_SUBSCRIBED = "already_subscribed"  # subscribe twice to one topic
    TOO_MANY_SUBSCRIPTIONS = "too_many_subscriptions"  # over MAX_SUBSCRIPTIONS
    RATE_LIMITED = "rate_limited"  # over PUBLISH_RATE/PUBLISH_BURST or SUBSCRIBE_RATE/_BURST
    BACKEND_UNAVAILABLE = "backend_unavailable"  # try again later
    INSUFFICIENT_STATE = "insufficient_state"  # a live gap could not be filled: resubscribe


class ProtocolError(Exception):
    """A request the server refuses; becomes an ``error`` frame with ``code`` and ``id``."""

    def __init__(self, code: str, message: str, id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


@dataclass(frozen=True, slots=True)
class Position:
    """Where a client stands in a topic: the last offset it saw, in that epoch."""

    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Subscribe:
    id: int | str | None
    topic: str
    since: Position | None = None
    info: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Unsubscribe:
    id: int | str | None
    topic: str


@dataclass(frozen=True, slots=True)
class Publish:
    id: int | str | None
    topic: str
    payload: str | bytes
    json: bool = False
    msg_id: str | None = None


@dataclass(frozen=True, slots=True)
class History:
    id: int | str | None
    topic: str
    since: int = 0
    epoch: str | None = None
    limit: int = DEFAULT_HISTORY_LIMIT


@dataclass(frozen=True, slots=True)
class Presence:
    id: int | str | None
    topic: str


@dataclass(frozen=True, slots=True)
class Ping:
    id: int | str | None


Request = Subscribe | Unsubscribe | Publish | History | Presence | Ping


def _is_int(value: object) -> TypeGuard[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def _parse_id(frame: dict[str, Any]) -> int | str | None:
    value = frame.get("id")
    if value is None:
        return None
    if _is_int(value):
        if 0 <= value <= MAX_INT_ID:
            return value
        raise ProtocolError(Code.BAD_REQUEST, "id must be an integer from 0 to 2**53-1")
    if isinstance(value, str):
        if len(value) <= MAX_ID_LENGTH:
            return value
        raise ProtocolError(Code.TOO_LARGE, f"id is over {MAX_ID_LENGTH} characters")
    raise ProtocolError(Code.BAD_REQUEST, "id must be an integer or a string")


class _Fields:
    """Typed access to a request's fields; every failure names the field."""

    def __init__(self, frame: dict[str, Any], id: int | str | None) -> None:
        self.frame = frame
        self.id = id

    def fail(self, message: str, code: str = Code.BAD_REQUEST) -> ProtocolError:
        return ProtocolError(code, message, self.id)

    def topic(self) -> str:
        if "topic" not in self.frame:
            raise self.fail("topic is missing")
        try:
            return validate_topic(self.frame["topic"])
        except InvalidTopic as exc:
            raise self.fail(str(exc), Code.INVALID_TOPIC) from None

    def int(self, name: str, default: int, minimum: int, maximum: int) -> int:
        value = self.frame.get(name, default)
        if not _is_int(value) or not minimum <= value <= maximum:
            raise self.fail(f"{name} must be an integer from {minimum} to {maximum}")
        return value

    # builtins.int: in this class, ``int`` is the method above.
    def str(self, name: str, max_length: builtins.int = MAX_ID_LENGTH) -> str | None:
        value = self.frame.get(name)
        if value is None:
            return None
        if not isinstance(value, str):
            raise self.fail(f"{name} must be a string")
        if len(value) > max_length:
            raise self.fail(f"{name} is over {max_length} characters", Code.TOO_LARGE)
        return value

    def position(self) -> Position | None:
        since = self.frame.get("since")
        if since is None:
            return None
        if not isinstance(since, dict):
            raise self.fail("since must be an object {offset, epoch}")
        offset, epoch = since.get("offset"), since.get("epoch")
        if not _is_int(offset) or not 0 <= offset <= MAX_INT_ID:
            raise self.fail("since.offset must be an integer from 0 to 2**53-1")
        if not isinstance(epoch, str) or len(epoch) > MAX_ID_LENGTH:
            raise self.fail(f"since.epoch must be a string of at most {MAX_ID_LENGTH} characters")
        return Position(offset, epoch)


def _publish(fields: _Fields) -> Publish:
    frame = fields.frame
    topic = fields.topic()
    if "data" not in frame:
        raise fields.fail("data is missing")
    data = frame["data"]
    msg_id = fields.str("msg_id")
    binary = frame.get("binary", False)
    if not isinstance(binary, bool):
        raise fields.fail("binary must be true or false")
    if binary:
        if not isinstance(data, str):
            raise fields.fail("data must be a base64 string when binary is true")
        try:
            payload = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise fields.fail("data is not valid base64") from None
        return Publish(fields.id, topic, payload, msg_id=msg_id)
    if isinstance(data, str):
        return Publish(fields.id, topic, data, msg_id=msg_id)
    return Publish(fields.id, topic, encode_json(data), json=True, msg_id=msg_id)


def _subscribe(fields: _Fields) -> Subscribe:
    topic = fields.topic()
    since = fields.position()
    info = fields.frame.get("info")
    if info is not None:
        if not isinstance(info, dict):
            raise fields.fail("info must be an object")
        if utf8_size(encode_json(info)) > MAX_INFO_SIZE:
            raise fields.fail(f"info is over {MAX_INFO_SIZE} bytes of JSON", Code.TOO_LARGE)
    return Subscribe(fields.id, topic, since, info)


def _history(fields: _Fields) -> History:
    topic = fields.topic()
    since = fields.int("since", 0, 0, MAX_INT_ID)
    epoch = fields.str("epoch")
    limit = fields.int("limit", DEFAULT_HISTORY_LIMIT, 0, MAX_HISTORY_LIMIT)
    return History(fields.id, topic, since, epoch, limit)


_OPS: dict[str, Callable[[_Fields], Request]] = {
    "subscribe": _subscribe,
    "unsubscribe": lambda f: Unsubscribe(f.id, f.topic()),
    "publish": _publish,
    "history": _history,
    "presence": lambda f: Presence(f.id, f.topic()),
    "ping": lambda f: Ping(f.id),
}


def parse(text: str) -> Request:
    """The request in one client text frame; :class:`ProtocolError` if it is not one.

    The frame is decoded strictly (:func:`megaphone.core.decoding.decode_json`): a frame that is not
    JSON, or holds text that is not valid Unicode anywhere (a lone surrogate such as
    ``"\\ud800"`` in ``data``, ``info``, ``msg_id``, ``id``, ``topic``, ``epoch``...), is
    refused as a whole with ``bad_request``, so every string of a parsed request is valid
    Unicode. The error carries the request's ``id`` when that alone can still be read.
    """
    try:
        frame = decode_json(text)
    except InvalidText as exc:
        raise _undecodable(text, exc) from None
    if not isinstance(frame, dict):
        raise ProtocolError(Code.BAD_REQUEST, "a frame must be a JSON object")
    request_id = _parse_id(frame)
    op = frame.get("op")
    if not isinstance(op, str):
        raise ProtocolError(Code.BAD_REQUEST, "op is missing or not a string", request_id)
    handler = _OPS.get(op)
    if handler is None:
        raise ProtocolError(Code.UNKNOWN_OP, f"unknown op {op[:40]!r}", request_id)
    try:
        return handler(_Fields(frame, request_id))
    except (ValueError, RecursionError) as exc:
        if isinstance(exc, ProtocolError):
            raise
        raise ProtocolError(Code.BAD_REQUEST, str(exc)[:200], request_id) from None


def _undecodable(text: str, error: InvalidText) -> ProtocolError:
    """The ``bad_request`` for a frame the strict decoder refused. If Python's lenient
    :mod:`json` reads it, the frame is JSON whose text is not valid Unicode (a lone surrogate
    escape) or whose number is out of range; its ``id``, if valid and of valid Unicode, goes in
    the error so that the client can tell which request failed. Only the id is taken from the
    lenient decoding, and only for the error frame: the request itself is refused."""
    try:
        frame = json.loads(text)
    except (ValueError, RecursionError):
        return ProtocolError(Code.BAD_REQUEST, f"the frame is {error}"[:200])
    try:
        utf8_size(text)  # the frame's text itself is valid: an escape or a number is not
        message = "the frame is not valid Unicode (a lone surrogate escape) or a number is too big"
    except InvalidText:
        message = f"the frame is {error}"[:200]
    try:
        request_id = _parse_id(frame) if isinstance(frame, dict) else None
        if isinstance(request_id, str):
            check_text(request_id, "id")
    except (ProtocolError, InvalidText):
        request_id = None
    return ProtocolError(Code.BAD_REQUEST, message, request_id)


# Server frames ------------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def message_json(message: Message) -> str:
    """The ``message`` frame of ``message``, as text. An encoder: see the module docstring."""
    if isinstance(message.payload, bytes):
        data = '"' + base64.b64encode(message.payload).decode("ascii") + '","binary":true'
    elif message.json:
        data = message.payload  # already the JSON text of the published value
    else:
        data = _dumps(message.payload)
    return (
        f'{{"type":"message","topic":{_dumps(message.topic)},"offset":{message.offset},'
        f'"epoch":{_dumps(message.epoch)},"data":{data}}}'
    )


def message_event(message: Message) -> dict[str, Any]:
    """The ASGI ``websocket.send`` event of the ``message`` frame, shared by every subscriber."""
    return {"type": "websocket.send", "text": message.encoded(message_json)}


def frame(type: str, **fields: Any) -> str:
    """A server frame: ``{"type": type, **fields}`` with ``None`` fields left out."""
    return _dumps({"type": type, **{k: v for k, v in fields.items() if v is not None}})


def reply_frame(id: int | str | None, result: dict[str, Any]) -> str:
    return _dumps({"type": "reply", "id": id, "result": result})


def error_frame(id: int | str | None, code: str, message: str) -> str:
    return _dumps({"type": "error", "id": id, "code": code, "message": message})


def history_reply(id: int | str | None, result: dict[str, Any], messages: list[Message]) -> str:
    """A ``history`` reply: ``result`` plus ``messages``, spliced from their shared encodings."""
    head = _dumps({"type": "reply", "id": id, "result": result})
    body = ",".join(message.encoded(message_json) for message in messages)
    return f'{head[:-2]},"messages":[{body}]}}}}'


def presence_event(kind: str, topic: str, entry: dict[str, Any]) -> str:
    """The ``join`` or ``leave`` frame, published as is on the topic's internal presence topic."""
    return _dumps({"type": kind, "topic": topic, **entry})


def presence_topic(topic: str) -> str:
    return PRESENCE_PREFIX + topic
