"""The HTTP API's bodies, declared once: what a request may hold, and what a response holds.

Each is a msgspec struct whose fields carry their limits (``Meta``); the views decode request
bodies into them (:func:`decode`, which turns a refusal into the documented error code) and encode
their answers from them (:func:`json_response`), and :mod:`megaphone.api.openapi` takes its
``components.schemas`` from them (:func:`msgspec.json.schema_components`), so the three cannot
disagree. The field types a protocol frame shares (a topic, an offset, a history limit) are the
protocol's own (:mod:`megaphone.protocol.schema`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
from django.http import HttpResponse
from msgspec import UNSET, Meta, Struct, UnsetType

from megaphone.api.errors import STATUS, ApiError, Code
from megaphone.core.closecodes import CloseCode
from megaphone.core.decoding import explain
from megaphone.core.message import MsgId
from megaphone.core.topics import InvalidTopic, validate_topic
from megaphone.protocol.schema import DEFAULT_HISTORY_LIMIT, HistoryLimit, Offset, Topic
from megaphone.server.control import DISCONNECT_CODES, SERVER_UNSUBSCRIBED

# Requests -----------------------------------------------------------------------------------


class PublishRequest(Struct, forbid_unknown_fields=True):
    """One message to publish."""

    topic: Topic
    data: Annotated[
        Any,
        Meta(
            description="A string is sent as text; any other JSON value as its JSON text "
            "(protocol clients receive the value); with `binary`, base64 bytes."
        ),
    ]
    binary: bool = False
    msg_id: Annotated[
        MsgId | None,
        Meta(
            description="Idempotency key: a retry with the same id on the same topic returns "
            "the first message's position and publishes nothing."
        ),
    ] = None


class BatchRequest(Struct, forbid_unknown_fields=True):
    """Several messages, published in order."""

    messages: Annotated[list[PublishRequest], Meta(min_length=1)]


#: What ``reason`` an ``unsubscribed`` frame may carry: the shape of a rejection code.
Reason = Annotated[str, Meta(pattern="^[a-z][a-z0-9_]*$", min_length=1, max_length=40)]


class DisconnectRequest(Struct, forbid_unknown_fields=True):
    """Close every socket of the user, in every worker."""

    code: Annotated[
        int,
        Meta(
            description="The close code (docs/protocol.md): 4410 (the client stops unless it can "
            "get new credentials), 4401, 1012 (it reconnects at once)...",
            extra_json_schema={"enum": sorted(int(c) for c in DISCONNECT_CODES)},
        ),
    ] = int(CloseCode.DISCONNECTED)


class UnsubscribeRequest(Struct, forbid_unknown_fields=True):
    """End the user's subscriptions to a topic, in every worker."""

    topic: Topic
    reason: Annotated[
        Reason, Meta(description="The `code` of the clients' `unsubscribed` frame.")
    ] = SERVER_UNSUBSCRIBED


class Ordered(Struct):
    """The order was sent to every worker; each connection of the user obeys it at once."""

    user: Annotated[str, Meta(description="The user's primary key.")]
    order: Literal["disconnect", "unsubscribe", "recheck"]


class HistoryQuery(Struct):
    """The query parameters of ``GET topics/<topic>/history``."""

    since: Annotated[Offset, Meta(description="Messages with an offset above this.")] = 0
    limit: Annotated[HistoryLimit, Meta(description="At most this many.")] = DEFAULT_HISTORY_LIMIT
    epoch: Annotated[
        str | None,
        Meta(
            description="The epoch `since` belongs to; if it is not the topic's, the history "
            "is returned from its start with `complete: false`."
        ),
    ] = None


#: A struct of query parameters.
Q = TypeVar("Q", bound=Struct)


# Responses ----------------------------------------------------------------------------------


class Position(Struct):
    """Where an accepted message stands."""

    topic: Topic
    offset: Annotated[int, Meta(ge=1)]
    epoch: str
    time: Annotated[float, Meta(description="Accepted at (Unix seconds).")]


class BatchResponse(Struct):
    results: list[Position]


class Message(Struct, tag_field="type", tag="message"):
    """A message, as the protocol's `message` frame."""

    topic: Topic
    offset: int
    epoch: str
    data: Annotated[Any, Meta(description="The text, the JSON value, or base64 when `binary`.")]
    binary: bool | UnsetType = UNSET


class History(Struct):
    """A topic's messages after an offset, oldest first (each as its encoded ``message``
    frame: :func:`megaphone.protocol.schema.encoded_messages`)."""

    topic: Topic
    offset: Annotated[int, Meta(description="The topic's latest offset.")]
    epoch: str
    complete: Annotated[
        bool,
        Meta(
            description="False when messages after `since` were trimmed from history, or "
            "`epoch` was not the topic's."
        ),
    ]
    #: Encoded as they are: a list of :class:`msgspec.Raw` (see ``views.history``).
    messages: list[Message]


class PresenceEntry(Struct):
    """A subscribed client, as the backend keeps it."""

    client: str
    user: str | None = None
    info: dict[str, Any] | None = None


class Presence(Struct):
    topic: Topic
    count: int
    #: The backend's entries, encoded as they are (dicts of this shape).
    clients: list[PresenceEntry]


class TopicCount(Struct):
    topic: Topic
    subscribers: int


class Topics(Struct):
    scope: Annotated[
        Literal["process", "cluster"],
        Meta(
            description="`process`: counts of the worker that answered (complete with one "
            "worker); `cluster`: of every process (the backend counts)."
        ),
    ]
    topics: list[TopicCount]


class Token(Struct):
    """A signed connection token for the session's user."""

    token: str
    expires_in: Annotated[float, Meta(description="Seconds.")]


class ErrorDetail(Struct):
    code: Annotated[str, Meta(extra_json_schema={"enum": sorted(STATUS)})]
    message: str


class Error(Struct, omit_defaults=True):
    """An error; the `code` is stable, the `message` is for humans."""

    error: ErrorDetail
    results: (
        Annotated[
            list[Position],
            Meta(description="Batch only: the messages published before the failure."),
        ]
        | UnsetType
    ) = UNSET


#: The components of the OpenAPI document, in its order.
COMPONENTS: tuple[type[Struct], ...] = (
    PublishRequest,
    BatchRequest,
    Position,
    BatchResponse,
    Message,
    History,
    Presence,
    Topics,
    Token,
    DisconnectRequest,
    UnsubscribeRequest,
    Ordered,
    Error,
)

_encode = msgspec.json.Encoder().encode


def json_response(body: Struct, status: int = 200) -> HttpResponse:
    """``body`` as an ``application/json`` response."""
    return HttpResponse(_encode(body), status=status, content_type="application/json")


# Decoding, and its errors -------------------------------------------------------------------

T = TypeVar("T")


def decode(value: Any, into: type[T]) -> T:
    """``value`` (a decoded JSON body) as the struct ``into``, or the :class:`ApiError` of
    docs/http-api.md: ``invalid_topic`` if a message's topic is missing or outside the rules
    (whatever else is wrong with it), else ``invalid_request`` naming the field. Every topic of
    the result is valid (:func:`~megaphone.core.topics.validate_topic`)."""
    try:
        result = msgspec.convert(value, into, strict=True)
    except msgspec.ValidationError as exc:
        where, message = explain(exc)
        prefix, item = _message_at(value, where, into)
        if isinstance(item, dict):
            _check_topic(item.get("topic"), prefix)
        raise ApiError(Code.INVALID_REQUEST, message if where else f"the body: {message}") from None
    if isinstance(result, (PublishRequest, UnsubscribeRequest)):
        _check_topic(result.topic, "")
    elif isinstance(result, BatchRequest):
        for i, one in enumerate(result.messages):
            _check_topic(one.topic, f"messages[{i}]")
    return result


def _message_at(value: Any, where: str, into: type[Any]) -> tuple[str, Any]:
    """``(prefix, message)``: the message of ``value`` that the refused field ``where`` is in
    (``messages[1].data``: the second of a batch), or ``("", None)``."""
    if into in (PublishRequest, UnsubscribeRequest):
        return "", value
    prefix = where.partition(".")[0]
    if not prefix.startswith("messages[") or not isinstance(value, dict):
        return "", None
    return prefix, value["messages"][int(prefix[len("messages[") : -1])]


def _check_topic(topic: object, prefix: str) -> None:
    try:
        validate_topic(topic)
    except InvalidTopic as exc:
        raise ApiError(
            Code.INVALID_TOPIC, f"{prefix + '.' if prefix else ''}topic: {exc}"
        ) from None
