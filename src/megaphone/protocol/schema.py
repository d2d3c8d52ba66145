"""The JSON protocol of the multiplexed endpoint ``/ws/connect/``: parsing and frame encoding.

Pure: no sockets, no Django, no awaiting. The client frames are declared once, as msgspec
structs (:class:`SubscribeFrame`, :class:`PublishFrame`...: a tagged union on ``op``, their limits
in ``Meta``); :func:`parse` decodes one text frame straight into them and returns the request
object the session handles (:class:`Subscribe`, :class:`Publish`...), or raises
:class:`ProtocolError` with a stable error code, derived from where the declaration refused the
frame (:func:`_refusal`). The ``*_frame`` and ``encode_*`` functions build the text of server
frames. The specification, with an example of every frame, is ``docs/protocol.md``; keep the two
in step.

Message frames are encoded once per message per process: :func:`message_json` (the frame's text)
and :func:`message_event` (the ASGI event around it) are *encoders* for
:meth:`megaphone.core.message.Message.encoded`, so every protocol subscriber of a topic is handed
the same event dict, and a history reply splices the same texts (:func:`encoded_messages`).
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
from msgspec import Meta, Struct

from megaphone.core.decoding import (
    InvalidText,
    check_text,
    decode_json,
    encode_json,
    explain,
    utf8_size,
)
from megaphone.core.message import MAX_MSG_ID_LENGTH, Message, MsgId
from megaphone.core.topics import (
    MAX_TOPIC_LENGTH,
    TOPIC_PATTERN,
    InvalidTopic,
    validate_topic,
)

#: The protocol version a server announces in its ``connected`` frame.
VERSION = 1

#: Request ids: an integer in 0 .. 2**53 - 1 (exact in JavaScript) or a string of at most this
#: many characters. ``msg_id`` (publish idempotency key) has the same string limit.
MAX_ID_LENGTH = MAX_MSG_ID_LENGTH
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
    REVOKED = "revoked"  # (unsubscribed) a re-check of the policy refuses the subscription now
    SERVER_UNSUBSCRIBED = "server_unsubscribed"  # (unsubscribed) megaphone.unsubscribe_user


class ProtocolError(Exception):
    """A request the server refuses; becomes an ``error`` frame with ``code`` and ``id``."""

    def __init__(self, code: str, message: str, id: int | str | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


# The field types, with their limits: the only place they are written ------------------------

#: A request id: an integer exact in JavaScript, or a short string.
Id = Annotated[int, Meta(ge=0, le=MAX_INT_ID)] | Annotated[str, Meta(max_length=MAX_ID_LENGTH)]
#: A topic name (:mod:`megaphone.core.topics`); the pattern is matched in full by
#: :func:`~megaphone.core.topics.validate_topic`, which gives the error its message.
Topic = Annotated[
    str,
    Meta(
        min_length=1,
        max_length=MAX_TOPIC_LENGTH,
        extra_json_schema={"pattern": TOPIC_PATTERN, "examples": ["orders", "chat.room-42"]},
    ),
]
Offset = Annotated[int, Meta(ge=0, le=MAX_INT_ID)]
Epoch = Annotated[str, Meta(max_length=MAX_ID_LENGTH)]
HistoryLimit = Annotated[int, Meta(ge=0, le=MAX_HISTORY_LIMIT)]

#: Where a string over its length limit is ``too_large`` rather than ``bad_request``.
_TOO_LARGE_FIELDS = frozenset({"id", "msg_id", "epoch"})


# The requests, as the session handles them ---------------------------------------------------


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


# The client frames, as they are on the wire (docs/protocol.md) -------------------------------


class _Frame(Struct, tag_field="op", kw_only=True):
    """What every client frame has: its ``op`` (the tag) and an optional ``id``."""

    id: Id | None = None


class _TopicFrame(_Frame, kw_only=True):
    topic: Topic

    def __post_init__(self) -> None:
        # Meta cannot say "the whole string matches" (JSON Schema patterns search): this does.
        try:
            validate_topic(self.topic)
        except InvalidTopic as exc:
            raise ProtocolError(Code.INVALID_TOPIC, str(exc), self.id) from None


class PositionFrame(Struct):
    """``since`` of a ``subscribe``: the last offset the client saw, and its epoch."""

    offset: Offset
    epoch: Epoch


#: Most server subscriptions a connection URL's ``since`` may name.
MAX_SINCE_TOPICS = 100


def parse_positions(text: str) -> dict[str, Position]:
    """The ``since`` parameter of a ``/ws/connect/`` URL: a JSON object of topic ->
    ``{"offset", "epoch"}``, the client's positions in the topics the server subscribes it to
    (:data:`megaphone.server.hooks.server_subscriptions`); :class:`ProtocolError`
    (``bad_request``) if it is not one."""
    try:
        value = msgspec.json.decode(text, type=dict[Topic, PositionFrame])
        for topic in value:
            validate_topic(topic)
    except (msgspec.DecodeError, InvalidTopic, UnicodeEncodeError, RecursionError) as exc:
        raise ProtocolError(Code.BAD_REQUEST, f"the URL's since: {exc}"[:200]) from None
    if len(value) > MAX_SINCE_TOPICS:
        raise ProtocolError(Code.BAD_REQUEST, f"the URL's since names over {MAX_SINCE_TOPICS}")
    return {topic: Position(p.offset, p.epoch) for topic, p in value.items()}


class SubscribeFrame(_TopicFrame, tag="subscribe", kw_only=True):
    since: PositionFrame | None = None
    #: Client info for presence: a JSON object of at most MAX_INFO_SIZE bytes.
    info: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _TopicFrame.__post_init__(self)
        if self.info is not None and utf8_size(encode_json(self.info)) > MAX_INFO_SIZE:
            raise ProtocolError(
                Code.TOO_LARGE, f"info is over {MAX_INFO_SIZE} bytes of JSON", self.id
            )

    def request(self) -> Subscribe:
        since = self.since
        position = None if since is None else Position(since.offset, since.epoch)
        return Subscribe(self.id, self.topic, position, self.info)


class UnsubscribeFrame(_TopicFrame, tag="unsubscribe", kw_only=True):
    def request(self) -> Unsubscribe:
        return Unsubscribe(self.id, self.topic)


class PublishFrame(_TopicFrame, tag="publish", kw_only=True):
    #: Any JSON value; with ``binary``, the base64 of the message's bytes.
    data: Any
    binary: bool = False
    msg_id: MsgId | None = None

    def request(self) -> Publish:
        data = self.data
        if self.binary:
            if not isinstance(data, str):
                raise ProtocolError(
                    Code.BAD_REQUEST, "data must be a base64 string when binary is true", self.id
                )
            try:
                payload = base64.b64decode(data, validate=True)
            except (binascii.Error, ValueError):
                raise ProtocolError(Code.BAD_REQUEST, "data is not valid base64", self.id) from None
            return Publish(self.id, self.topic, payload, msg_id=self.msg_id)
        if isinstance(data, str):
            return Publish(self.id, self.topic, data, msg_id=self.msg_id)
        return Publish(self.id, self.topic, encode_json(data), json=True, msg_id=self.msg_id)


class HistoryFrame(_TopicFrame, tag="history", kw_only=True):
    since: Offset = 0
    epoch: Epoch | None = None
    limit: HistoryLimit = DEFAULT_HISTORY_LIMIT

    def request(self) -> History:
        return History(self.id, self.topic, self.since, self.epoch, self.limit)


class PresenceFrame(_TopicFrame, tag="presence", kw_only=True):
    def request(self) -> Presence:
        return Presence(self.id, self.topic)


class PingFrame(_Frame, tag="ping", kw_only=True):
    def request(self) -> Ping:
        return Ping(self.id)


ClientFrame = (
    SubscribeFrame | UnsubscribeFrame | PublishFrame | HistoryFrame | PresenceFrame | PingFrame
)
_decode_frame = msgspec.json.Decoder(ClientFrame).decode
#: The ops of this protocol version, from the declaration, and the frame of each.
FRAMES: dict[str, type[_Frame]] = {
    frame.__struct_config__.tag: frame for frame in ClientFrame.__args__
}
OPS = tuple(FRAMES)


class _Id(Struct):
    """The ``id`` alone: read, on a refused frame, for the error frame."""

    id: Id | None = None


class _Op(Struct):
    op: str


def parse(text: str) -> Request:
    """The request in one client text frame; :class:`ProtocolError` if it is not one.

    The frame is decoded strictly (:mod:`megaphone.core.decoding`): a frame that is not
    JSON, or holds text that is not valid Unicode anywhere (a lone surrogate such as
    ``"\\ud800"`` in ``data``, ``info``, ``msg_id``, ``id``, ``topic``, ``epoch``...), is
    refused as a whole with ``bad_request``, so every string of a parsed request is valid
    Unicode. The error carries the request's ``id`` when that alone can still be read.
    """
    try:
        return _decode_frame(text).request()
    except (msgspec.DecodeError, UnicodeEncodeError, RecursionError):
        raise _refusal(text) from None


def _refusal(text: str) -> ProtocolError:
    """The :class:`ProtocolError` for a frame the declaration refused, found on the error path
    only (the valid frame costs one decoding): the ``id`` first, then ``op``, then ``topic``,
    then the op's other fields, so that the code does not depend on the order of the frame's
    keys."""
    try:
        frame = decode_json(text)
    except InvalidText as exc:
        return _undecodable(text, exc)
    if not isinstance(frame, dict):
        return ProtocolError(Code.BAD_REQUEST, "a frame must be a JSON object")
    try:
        request_id = msgspec.convert(frame, _Id).id
    except msgspec.ValidationError as exc:
        return _invalid(exc, None)
    try:
        op = msgspec.convert(frame, _Op).op
    except msgspec.ValidationError:
        return ProtocolError(Code.BAD_REQUEST, "op is missing or not a string", request_id)
    if op not in FRAMES:
        return ProtocolError(Code.UNKNOWN_OP, f"unknown op {op[:40]!r}", request_id)
    if "topic" in FRAMES[op].__struct_fields__:
        if "topic" not in frame:
            return ProtocolError(Code.BAD_REQUEST, "topic is missing", request_id)
        try:
            validate_topic(frame["topic"])
        except InvalidTopic as invalid:
            return ProtocolError(Code.INVALID_TOPIC, str(invalid), request_id)
    try:
        msgspec.convert(frame, ClientFrame).request()
    except msgspec.ValidationError as exc:
        return _invalid(exc, request_id)
    except ProtocolError as exc:
        return exc
    except RecursionError:
        return ProtocolError(Code.BAD_REQUEST, "nested too deeply", request_id)
    # Valid as a Python value but not as text: a number out of range, say.
    return ProtocolError(Code.BAD_REQUEST, "the frame is not valid", request_id)  # pragma: no cover


def _invalid(error: msgspec.ValidationError, request_id: int | str | None) -> ProtocolError:
    """``bad_request`` naming the field, or ``too_large`` for an id, ``msg_id`` or ``epoch``
    over its length limit."""
    where, message = explain(error)
    if where in _TOO_LARGE_FIELDS and "of length <=" in message:
        return ProtocolError(Code.TOO_LARGE, message, request_id)
    return ProtocolError(Code.BAD_REQUEST, message, request_id)


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
    request_id: int | str | None = None
    if isinstance(frame, dict):
        try:
            request_id = msgspec.convert({"id": frame.get("id")}, _Id).id
            if isinstance(request_id, str):
                check_text(request_id, "id")
        except (msgspec.ValidationError, InvalidText):
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


def encoded_messages(messages: list[Message]) -> list[msgspec.Raw]:
    """The ``message`` frames of ``messages``, from their shared encodings, to go in a JSON
    value that msgspec encodes (a history reply, the HTTP API's history): nothing is encoded
    again, and no JSON text is cut or spliced by hand."""
    return [msgspec.Raw(message.encoded(message_json)) for message in messages]


def history_reply(id: int | str | None, result: dict[str, Any], messages: list[Message]) -> str:
    """A ``history`` reply: ``result`` plus ``messages`` (see :func:`encoded_messages`)."""
    result = {**result, "messages": encoded_messages(messages)}
    return encode_json({"type": "reply", "id": id, "result": result})


def presence_event(kind: str, topic: str, entry: dict[str, Any]) -> str:
    """The ``join`` or ``leave`` frame, published as is on the topic's internal presence topic."""
    return _dumps({"type": kind, "topic": topic, **entry})


def presence_topic(topic: str) -> str:
    return PRESENCE_PREFIX + topic
