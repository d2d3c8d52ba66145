"""The HTTP API's endpoints: publish, read history, presence and topics from other servers and
scripts.

Mount it in the project's URLconf (the example serves it at ``/api/``)::

    path("", include("megaphone.urls")),  # the API under api/, beside the dashboard and health

Every route but ``openapi.json`` needs an API key (:mod:`megaphone.api.keys`). Bodies and answers
are the structs of :mod:`megaphone.api.schemas`; errors are JSON with a stable ``code``
(:mod:`megaphone.api.errors`, docs/http-api.md).

A published message is encoded as a protocol client's publish is: ``data`` a JSON string is a
text message, any other JSON value is sent as its JSON text (protocol clients receive the value),
and ``"binary": true`` makes ``data`` the base64 of a binary message. History messages have the
shape of the protocol's ``message`` frames.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Coroutine
from typing import Any, cast

import msgspec
from django.http import HttpRequest, HttpResponse
from django.views.decorators.csrf import csrf_exempt

from megaphone.api import schemas
from megaphone.api.errors import STATUS, ApiError, Code
from megaphone.api.keys import ApiKey, authenticate, rate_limit, require_topic
from megaphone.api.openapi import openapi_document
from megaphone.backends import BackendUnavailable
from megaphone.conf import get_config, topic_options
from megaphone.core.decoding import InvalidText, decode_json, explain, strict_query
from megaphone.core.logs import get_logger
from megaphone.core.message import Message
from megaphone.core.topics import InvalidTopic, validate_topic
from megaphone.engine.node import get_node
from megaphone.engine.publishing import (
    InvalidMessage,
    PublishError,
    apublish_prepared,
    prepare,
)
from megaphone.protocol.schema import encoded_messages
from megaphone.server.control import (
    RECHECK,
    Order,
    asend_order,
    disconnect_order,
    unsubscribe_order,
)
from megaphone.server.permissions import may_read_history, may_see_presence

__all__ = [
    "STATUS",
    "disconnect_user",
    "history",
    "not_found",
    "openapi",
    "presence",
    "publish",
    "publish_batch",
    "recheck_user",
    "unsubscribe_user",
]

logger = get_logger(__name__)


# Requests -----------------------------------------------------------------------------------


def read_json(request: HttpRequest) -> Any:
    """The request's body, as JSON: ``body_too_large`` over ``API_MAX_BODY_SIZE`` (read no
    further), ``invalid_json`` if it is not JSON or not valid UTF-8 / Unicode."""
    limit = get_config().API_MAX_BODY_SIZE
    try:
        length = int(request.META.get("CONTENT_LENGTH") or 0)
    except ValueError:
        length = 0
    if length > limit:
        raise ApiError(Code.BODY_TOO_LARGE, f"the body is over {limit} bytes")
    body = request.read(limit + 1)
    if len(body) > limit:
        raise ApiError(Code.BODY_TOO_LARGE, f"the body is over {limit} bytes")
    try:
        return decode_json(body)
    except InvalidText as exc:
        raise ApiError(Code.INVALID_JSON, f"the body is {exc}"[:200]) from None


#: A message checked and encoded for publishing: ``(topic, payload, is_json, msg_id)``.
Prepared = tuple[str, str | bytes, bool, str | None]


def prepare_message(item: schemas.PublishRequest, where: str = "") -> Prepared:
    """What the declaration cannot say about a message: its base64, its size once encoded, the
    text of its ``msg_id`` (codes of :func:`megaphone.engine.publishing.prepare`)."""
    prefix = f"{where}." if where else ""
    data = item.data
    if item.binary:
        if not isinstance(data, str):
            raise ApiError(Code.INVALID_REQUEST, f"{prefix}data must be base64 when binary")
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(Code.INVALID_REQUEST, f"{prefix}data is not valid base64") from None
    try:
        topic, payload, is_json = prepare(item.topic, data, item.msg_id)
    except InvalidMessage as exc:
        code = exc.code if exc.code in STATUS else Code.INVALID_REQUEST
        raise ApiError(code, f"{prefix}{exc}") from None
    return topic, payload, is_json, item.msg_id


def check_query(request: HttpRequest) -> None:
    """Refuse a query string whose percent-escapes are not valid UTF-8 (``%FF``,
    ``%ED%A0%80``), which Django's ``request.GET`` would silently turn into U+FFFD."""
    try:
        strict_query(request.META.get("QUERY_STRING", ""))
    except InvalidText as exc:
        raise ApiError(Code.INVALID_PARAMETER, str(exc)) from None


def read_query(request: HttpRequest, into: type[schemas.Q]) -> schemas.Q:
    """The query parameters as the struct ``into`` (``invalid_parameter`` naming the bad one)."""
    try:
        return msgspec.convert(dict(request.GET.items()), into, strict=False)
    except msgspec.ValidationError as exc:
        raise ApiError(Code.INVALID_PARAMETER, explain(exc)[1]) from None


def _position(message: Message) -> schemas.Position:
    return schemas.Position(message.topic, message.offset, message.epoch, message.time)


async def _publish(prepared: Prepared) -> Message:
    topic = prepared[0]
    try:
        return await apublish_prepared(*prepared)
    except PublishError as exc:
        logger.error("HTTP API publish on %s failed: %s", topic, exc)
        raise ApiError(Code.BACKEND_UNAVAILABLE, str(exc)) from None


# Views --------------------------------------------------------------------------------------

View = Callable[..., Coroutine[Any, Any, HttpResponse]]


def error_response(error: ApiError) -> HttpResponse:
    """``error`` as its JSON answer (:class:`megaphone.api.schemas.Error`)."""
    body = schemas.Error(schemas.ErrorDetail(error.code, error.message), **error.extra)
    response = schemas.json_response(body, status=STATUS[error.code])
    for name, value in error.headers.items():
        response[name] = value
    return response


def endpoint(*methods: str, auth: bool = True) -> Callable[[View], View]:
    """JSON errors, the method check and (with ``auth``) the API key, around an async view."""

    def decorate(view: View) -> View:
        async def wrapper(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            try:
                if request.method not in methods:
                    raise ApiError(
                        Code.METHOD_NOT_ALLOWED,
                        f"{request.method} is not allowed here; use {', '.join(methods)}",
                        {"Allow": ", ".join(methods)},
                    )
                if auth:
                    kwargs["key"] = authenticate(request)
                check_query(request)
                return await view(request, *args, **kwargs)
            except ApiError as exc:
                if exc.code in (Code.INVALID_API_KEY, Code.BACKEND_UNAVAILABLE):
                    logger.warning("HTTP API %s %s: %s", request.method, request.path, exc.code)
                return error_response(exc)

        wrapper.__name__ = view.__name__
        wrapper.__doc__ = view.__doc__
        return csrf_exempt(wrapper)

    return decorate


@endpoint("POST")
async def publish(request: HttpRequest, key: ApiKey) -> HttpResponse:
    """``POST publish``: one message; answers its position."""
    item = schemas.decode(read_json(request), schemas.PublishRequest)
    prepared = prepare_message(item)
    require_topic(key, item.topic)
    rate_limit(key, 1)
    return schemas.json_response(_position(await _publish(prepared)))


@endpoint("POST")
async def publish_batch(request: HttpRequest, key: ApiKey) -> HttpResponse:
    """``POST publish/batch``: several messages, published in order; all or nothing is checked
    before the first is published."""
    body = read_json(request)
    limit = get_config().API_BATCH_MAX
    raw = body.get("messages") if isinstance(body, dict) and len(body) == 1 else None
    if isinstance(raw, list) and len(raw) > limit:
        raise ApiError(Code.BATCH_TOO_LARGE, f"{len(raw)} messages; at most {limit} per batch")
    batch = schemas.decode(body, schemas.BatchRequest)
    prepared = [prepare_message(item, f"messages[{i}]") for i, item in enumerate(batch.messages)]
    for item in batch.messages:
        require_topic(key, item.topic)
    rate_limit(key, len(prepared))
    results: list[schemas.Position] = []
    for one in prepared:
        try:
            results.append(_position(await _publish(one)))
        except ApiError as exc:
            exc.extra["results"] = results  # these were published; the rest were not
            raise
    return schemas.json_response(schemas.BatchResponse(results))


@endpoint("GET", "HEAD")
async def topics(request: HttpRequest, key: ApiKey) -> HttpResponse:
    """``GET topics``: topics with subscribers in the answering worker, and how many (scope
    ``process``). No backend counts subscribers across processes: ``ClusterTopics`` counts the
    processes listening, which is another figure (``manage.py megaphone topics`` shows it)."""
    rate_limit(key, 1)
    node = await _node()
    counts = node.hub.topics()
    listed = [
        schemas.TopicCount(name, count)
        for name, count in sorted(counts.items())
        if not name.startswith("$") and may_see_presence(key, name)
    ]
    return schemas.json_response(schemas.Topics("process", listed))


@endpoint("GET", "HEAD")
async def history(request: HttpRequest, topic: str, key: ApiKey) -> HttpResponse:
    """``GET topics/<topic>/history?since=&limit=&epoch=``: messages after offset ``since``."""
    _valid_topic(topic)
    require_topic(key, topic, may_read_history(key, topic))
    query = read_query(request, schemas.HistoryQuery)
    rate_limit(key, 1)
    node = await _node()
    try:
        page = await node.history(topic, query.since, query.limit)
        complete = page.complete
        if query.epoch is not None and query.epoch != page.epoch:
            # Offsets of a lost history: the current one from its start, and say so.
            page = await node.history(topic, 0, query.limit)
            complete = False
    except BackendUnavailable as exc:
        raise ApiError(Code.BACKEND_UNAVAILABLE, str(exc)) from None
    messages = cast(list[schemas.Message], encoded_messages(page.messages))  # encoded once
    body = schemas.History(topic, page.offset, page.epoch, complete, messages)
    return schemas.json_response(body)


@endpoint("GET", "HEAD")
async def presence(request: HttpRequest, topic: str, key: ApiKey) -> HttpResponse:
    """``GET topics/<topic>/presence``: the clients subscribed to ``topic``, in every process."""
    _valid_topic(topic)
    require_topic(key, topic, may_see_presence(key, topic))
    rate_limit(key, 1)
    node = await _node()
    if node.backend.presence_store is None:
        raise ApiError(Code.PRESENCE_UNSUPPORTED, f"the {node.backend.name} keeps no presence")
    if not topic_options(topic).presence:
        raise ApiError(
            Code.PRESENCE_OFF,
            f"presence is not kept on {topic!r}: turn it on with PRESENCE or TOPICS",
        )
    try:
        entries = await node.presence(topic)
    except BackendUnavailable as exc:
        raise ApiError(Code.BACKEND_UNAVAILABLE, str(exc)) from None
    clients = sorted(entries.values(), key=lambda entry: str(entry.get("client")))
    entries_as_they_are = cast(list[schemas.PresenceEntry], clients)
    return schemas.json_response(schemas.Presence(topic, len(clients), entries_as_they_are))


async def _order(key: ApiKey, user: str, order: Order) -> HttpResponse:
    """Send ``order`` to ``user``'s connections: only a key for every topic (no patterns, or
    ``*``) may."""
    if key.patterns is not None and "*" not in key.patterns:
        raise ApiError(Code.FORBIDDEN_USERS, "only a key for every topic may order users")
    rate_limit(key, 1)
    try:
        await asend_order(user, order)
    except PublishError as exc:
        logger.error("HTTP API order %s to user %s failed: %s", order.op, user, exc)
        raise ApiError(Code.BACKEND_UNAVAILABLE, str(exc)) from None
    return schemas.json_response(schemas.Ordered(user, order.op))


@endpoint("POST")
async def disconnect_user(request: HttpRequest, user: str, key: ApiKey) -> HttpResponse:
    """``POST users/<pk>/disconnect`` ``{"code": 4410}``: close every socket of the user."""
    empty = request.META.get("CONTENT_LENGTH") in (None, "", "0")
    body = schemas.decode({} if empty else read_json(request), schemas.DisconnectRequest)
    try:
        order = disconnect_order(body.code)
    except ValueError as exc:  # a code outside the enum (msgspec checks only its type)
        raise ApiError(Code.INVALID_REQUEST, f"code: {exc}") from None
    return await _order(key, user, order)


@endpoint("POST")
async def unsubscribe_user(request: HttpRequest, user: str, key: ApiKey) -> HttpResponse:
    """``POST users/<pk>/unsubscribe`` ``{"topic", "reason"}``: end the user's subscriptions to
    the topic."""
    body = schemas.decode(read_json(request), schemas.UnsubscribeRequest)
    return await _order(key, user, unsubscribe_order(body.topic, body.reason))


@endpoint("POST")
async def recheck_user(request: HttpRequest, user: str, key: ApiKey) -> HttpResponse:
    """``POST users/<pk>/recheck``: re-check the user's subscriptions against the policy."""
    return await _order(key, user, RECHECK)


@endpoint("GET", "HEAD", auth=False)
async def openapi(request: HttpRequest) -> HttpResponse:
    """``GET openapi.json``: the OpenAPI 3.1 description of this API."""
    document = openapi_document(request.build_absolute_uri("./"))
    return HttpResponse(msgspec.json.encode(document), content_type="application/json")


async def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under the API prefix: a JSON 404."""
    return error_response(ApiError(Code.NOT_FOUND, f"no API route {request.path!r}"))


def _valid_topic(topic: str) -> None:
    try:
        validate_topic(topic)
    except InvalidTopic as exc:
        raise ApiError(Code.INVALID_TOPIC, str(exc)) from None


async def _node() -> Any:
    try:
        return await get_node()
    except (BackendUnavailable, OSError) as exc:
        raise ApiError(Code.BACKEND_UNAVAILABLE, f"the backend cannot be reached: {exc}") from None
