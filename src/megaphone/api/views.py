"""The HTTP API: publish, read history, presence and topics from other servers and scripts.

Mount it in the project's URLconf (the example serves it at ``/api/``)::

    path("", include("megaphone.urls")),  # the API under api/, beside the dashboard and health

Every route but ``openapi.json`` needs an API key from ``MEGAPHONE["API_KEYS"]``, sent as
``Authorization: Bearer <key>``; keys are compared in constant time. A key listed with topic
patterns may only use the topics they match. Errors are JSON, ``{"error": {"code": ...,
"message": ...}}``, with a stable ``code`` per cause (see :class:`Code` and docs/http-api.md).

A published message is encoded as a protocol client's publish is: ``data`` a JSON string is a
text message, any other JSON value is sent as its JSON text (protocol clients receive the value),
and ``"binary": true`` makes ``data`` the base64 of a binary message. History messages have the
shape of the protocol's ``message`` frames.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.csrf import csrf_exempt

from megaphone.backends import BackendUnavailable
from megaphone.conf import get_config, topic_options
from megaphone.core.decoding import InvalidText, decode_json, strict_query
from megaphone.core.logs import get_logger
from megaphone.core.message import Message
from megaphone.core.topics import InvalidTopic, validate_topic
from megaphone.engine.node import get_node
from megaphone.engine.publishing import InvalidMessage, PublishError, apublish, prepare
from megaphone.protocol.schema import (
    DEFAULT_HISTORY_LIMIT,
    MAX_HISTORY_LIMIT,
    MAX_INT_ID,
    message_json,
)
from megaphone.server.permissions import Service, may_read_history, may_see_presence

logger = get_logger(__name__)


class Code:
    """Stable error codes of the HTTP API, each with its HTTP status."""

    INVALID_JSON = "invalid_json"  # 400: the body is not JSON, or not valid UTF-8 / Unicode
    INVALID_REQUEST = "invalid_request"  # 400: a field missing, of the wrong type or value
    INVALID_TOPIC = "invalid_topic"  # 400: a topic name outside the rules
    INVALID_PARAMETER = "invalid_parameter"  # 400: a query parameter is bad (or not UTF-8)
    MISSING_API_KEY = "missing_api_key"  # 401: no ``Authorization: Bearer`` header
    INVALID_API_KEY = "invalid_api_key"  # 401: a key that is not in API_KEYS
    FORBIDDEN_TOPIC = "forbidden_topic"  # 403: the key's topic patterns do not match
    NOT_FOUND = "not_found"  # 404: no such route
    PRESENCE_OFF = "presence_off"  # 404: presence is not kept on this topic
    METHOD_NOT_ALLOWED = "method_not_allowed"  # 405
    BODY_TOO_LARGE = "body_too_large"  # 413: body over API_MAX_BODY_SIZE
    MESSAGE_TOO_LARGE = "message_too_large"  # 413: a message over MAX_MESSAGE_SIZE
    BATCH_TOO_LARGE = "batch_too_large"  # 413: more messages than API_BATCH_MAX
    RATE_LIMITED = "rate_limited"  # 429: over API_RATE_LIMIT / API_RATE_BURST; see Retry-After
    PRESENCE_UNSUPPORTED = "presence_unsupported"  # 501: the backend keeps no presence
    BACKEND_UNAVAILABLE = "backend_unavailable"  # 503: try again later (same msg_id is safe)


STATUS = {
    Code.INVALID_JSON: 400,
    Code.INVALID_REQUEST: 400,
    Code.INVALID_TOPIC: 400,
    Code.INVALID_PARAMETER: 400,
    Code.MISSING_API_KEY: 401,
    Code.INVALID_API_KEY: 401,
    Code.FORBIDDEN_TOPIC: 403,
    Code.NOT_FOUND: 404,
    Code.PRESENCE_OFF: 404,
    Code.METHOD_NOT_ALLOWED: 405,
    Code.BODY_TOO_LARGE: 413,
    Code.MESSAGE_TOO_LARGE: 413,
    Code.BATCH_TOO_LARGE: 413,
    Code.RATE_LIMITED: 429,
    Code.PRESENCE_UNSUPPORTED: 501,
    Code.BACKEND_UNAVAILABLE: 503,
}


class ApiError(Exception):
    def __init__(
        self, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra

    def response(self) -> JsonResponse:
        body: dict[str, Any] = {"error": {"code": self.code, "message": self.message}}
        body.update(self.extra)
        response = JsonResponse(body, status=STATUS[self.code])
        for name, value in self.headers.items():
            response[name] = value
        return response


# Keys and their rate limits -----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ApiKey(Service):
    """An authenticated caller: its position in ``API_KEYS`` and its topic patterns, which
    decide every action (see :class:`megaphone.server.permissions.Service`)."""

    index: int
    patterns: tuple[str, ...] | None  # None: every topic

    def allows(self, topic: str) -> bool:
        return self.patterns is None or any(fnmatchcase(topic, p) for p in self.patterns)


def authenticate(request: HttpRequest) -> ApiKey:
    """The caller's key, compared in constant time against every configured key."""
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    if scheme.lower() != "bearer" or not presented.strip():
        raise ApiError(
            Code.MISSING_API_KEY,
            "send an API key as 'Authorization: Bearer <key>'",
            {"WWW-Authenticate": 'Bearer realm="megaphone"'},
        )
    given = presented.strip().encode()
    keys = get_config().API_KEYS
    entries: list[tuple[str, tuple[str, ...] | None]] = (
        [(k, tuple(p)) for k, p in keys.items()]
        if isinstance(keys, dict)
        else [(k, None) for k in keys]
    )
    found: ApiKey | None = None
    for index, (key, patterns) in enumerate(entries):
        # No early exit: the time taken does not tell which key, or how much of one, matched.
        if hmac.compare_digest(given, key.encode()) and found is None:
            found = ApiKey(index, patterns)
    if found is None:
        raise ApiError(
            Code.INVALID_API_KEY,
            "this API key is not valid" if entries else "no API keys are configured",
            {"WWW-Authenticate": 'Bearer realm="megaphone", error="invalid_token"'},
        )
    return found


class _Bucket:
    """A token bucket taking several tokens at once (a batch costs one per message)."""

    __slots__ = ("burst", "rate", "stamp", "tokens")

    def __init__(self, rate: float, burst: float) -> None:
        self.rate, self.burst = rate, max(float(burst), 1.0)
        self.tokens, self.stamp = self.burst, time.monotonic()

    def take(self, n: int) -> float:
        """Take ``n`` tokens and return 0, or take none and return the seconds to wait."""
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= n:
            self.tokens -= n
            return 0.0
        return (min(n, self.burst) - self.tokens) / self.rate


_buckets: dict[int, tuple[tuple[float, int], _Bucket]] = {}
_buckets_lock = threading.Lock()


def rate_limit(key: ApiKey, cost: int) -> None:
    config = get_config()
    if not config.API_RATE_LIMIT:
        return
    limits = (float(config.API_RATE_LIMIT), config.API_RATE_BURST)
    with _buckets_lock:
        entry = _buckets.get(key.index)
        if entry is None or entry[0] != limits:
            entry = _buckets[key.index] = (limits, _Bucket(*limits))
        wait = entry[1].take(cost)
    if wait:
        raise ApiError(
            Code.RATE_LIMITED,
            f"over the rate limit of {limits[0]:g} messages per second for this key",
            {"Retry-After": str(max(1, int(wait + 0.999)))},
        )


# Requests -----------------------------------------------------------------------------------


def read_json(request: HttpRequest) -> Any:
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


@dataclass(frozen=True, slots=True)
class _Publish:
    topic: str
    data: Any
    msg_id: str | None


def parse_message(value: Any, where: str = "") -> _Publish:
    """One message to publish: ``{"topic", "data", "binary"?, "msg_id"?}``."""
    if not isinstance(value, dict):
        raise ApiError(Code.INVALID_REQUEST, f"{where or 'the body'} must be a JSON object")
    prefix = f"{where}." if where else ""
    topic = value.get("topic")
    try:
        validate_topic(topic)
    except InvalidTopic as exc:
        raise ApiError(Code.INVALID_TOPIC, f"{prefix}topic: {exc}") from None
    if "data" not in value:
        raise ApiError(Code.INVALID_REQUEST, f"{prefix}data is missing")
    data = value["data"]
    binary = value.get("binary", False)
    if not isinstance(binary, bool):
        raise ApiError(Code.INVALID_REQUEST, f"{prefix}binary must be true or false")
    if binary:
        if not isinstance(data, str):
            raise ApiError(Code.INVALID_REQUEST, f"{prefix}data must be base64 when binary")
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(Code.INVALID_REQUEST, f"{prefix}data is not valid base64") from None
    msg_id = value.get("msg_id")
    unknown = set(value) - {"topic", "data", "binary", "msg_id"}
    if unknown:
        raise ApiError(Code.INVALID_REQUEST, f"{prefix}unknown field {sorted(unknown)[0]!r}")
    try:
        prepare(topic, data, msg_id)  # the size, the msg_id and the JSON encoding
    except InvalidMessage as exc:
        code = exc.code if exc.code in STATUS else Code.INVALID_REQUEST
        raise ApiError(code, f"{prefix}{exc}") from None
    return _Publish(topic, data, msg_id)


def require_topic(key: ApiKey, topic: str, allowed: bool | None = None) -> None:
    """Refuse (403) unless ``allowed`` (by default: the key may use ``topic``)."""
    if not (key.allows(topic) if allowed is None else allowed):
        raise ApiError(Code.FORBIDDEN_TOPIC, f"this API key may not use topic {topic!r}")


def check_query(request: HttpRequest) -> None:
    """Refuse a query string whose percent-escapes are not valid UTF-8 (``%FF``,
    ``%ED%A0%80``), which Django's ``request.GET`` would silently turn into U+FFFD."""
    try:
        strict_query(request.META.get("QUERY_STRING", ""))
    except InvalidText as exc:
        raise ApiError(Code.INVALID_PARAMETER, str(exc)) from None


def query_int(request: HttpRequest, name: str, default: int, maximum: int) -> int:
    raw = request.GET.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= maximum:
        raise ApiError(Code.INVALID_PARAMETER, f"{name} must be an integer from 0 to {maximum}")
    return value


def _position(message: Message) -> dict[str, Any]:
    return {
        "topic": message.topic,
        "offset": message.offset,
        "epoch": message.epoch,
        "time": message.time,
    }


async def _publish(item: _Publish) -> Message:
    try:
        return await apublish(item.topic, item.data, msg_id=item.msg_id)
    except InvalidMessage as exc:  # checked already; settings may have changed in between
        raise ApiError(Code.INVALID_REQUEST, str(exc)) from None
    except PublishError as exc:
        logger.error("HTTP API publish on %s failed: %s", item.topic, exc)
        raise ApiError(Code.BACKEND_UNAVAILABLE, str(exc)) from None


# Views --------------------------------------------------------------------------------------

View = Callable[..., Awaitable[HttpResponse]]


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
                return exc.response()

        wrapper.__name__ = view.__name__
        wrapper.__doc__ = view.__doc__
        return csrf_exempt(wrapper)

    return decorate


@endpoint("POST")
async def publish(request: HttpRequest, key: ApiKey) -> HttpResponse:
    """``POST publish``: one message; answers its position."""
    item = parse_message(read_json(request))
    require_topic(key, item.topic)
    rate_limit(key, 1)
    return JsonResponse(_position(await _publish(item)))


@endpoint("POST")
async def publish_batch(request: HttpRequest, key: ApiKey) -> HttpResponse:
    """``POST publish/batch``: several messages, published in order; all or nothing is checked
    before the first is published."""
    body = read_json(request)
    if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
        raise ApiError(Code.INVALID_REQUEST, 'the body must be {"messages": [...]}')
    raw = body["messages"]
    if len(body) > 1:
        raise ApiError(Code.INVALID_REQUEST, "the body may only have messages")
    limit = get_config().API_BATCH_MAX
    if len(raw) > limit:
        raise ApiError(Code.BATCH_TOO_LARGE, f"{len(raw)} messages; at most {limit} per batch")
    if not raw:
        raise ApiError(Code.INVALID_REQUEST, "messages is empty")
    items = [parse_message(value, f"messages[{i}]") for i, value in enumerate(raw)]
    for item in items:
        require_topic(key, item.topic)
    rate_limit(key, len(items))
    results: list[dict[str, Any]] = []
    for item in items:
        try:
            results.append(_position(await _publish(item)))
        except ApiError as exc:
            exc.extra["results"] = results  # these were published; the rest were not
            raise
    return JsonResponse({"results": results})


@endpoint("GET", "HEAD")
async def topics(request: HttpRequest, key: ApiKey) -> HttpResponse:
    """``GET topics``: topics with subscribers in the answering worker, and how many (scope
    ``process``). No backend counts subscribers across processes: ``ClusterTopics`` counts the
    processes listening, which is another figure (``manage.py megaphone topics`` shows it)."""
    rate_limit(key, 1)
    node = await _node()
    counts, scope = node.hub.topics(), "process"
    listed = [
        {"topic": name, "subscribers": count}
        for name, count in sorted(counts.items())
        if not name.startswith("$") and may_see_presence(key, name)
    ]
    return JsonResponse({"scope": scope, "topics": listed})


@endpoint("GET", "HEAD")
async def history(request: HttpRequest, topic: str, key: ApiKey) -> HttpResponse:
    """``GET topics/<topic>/history?since=&limit=&epoch=``: messages after offset ``since``."""
    _valid_topic(topic)
    require_topic(key, topic, may_read_history(key, topic))
    since = query_int(request, "since", 0, MAX_INT_ID)
    limit = query_int(request, "limit", DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)
    epoch = request.GET.get("epoch")
    rate_limit(key, 1)
    node = await _node()
    try:
        page = await node.history(topic, since, limit)
        complete = page.complete
        if epoch is not None and epoch != page.epoch:
            # Offsets of a lost history: the current one from its start, and say so.
            page = await node.history(topic, 0, limit)
            complete = False
    except BackendUnavailable as exc:
        raise ApiError(Code.BACKEND_UNAVAILABLE, str(exc)) from None
    head = json.dumps(
        {"topic": topic, "offset": page.offset, "epoch": page.epoch, "complete": complete},
        ensure_ascii=False,
        separators=(",", ":"),
    )
    body = ",".join(message.encoded(message_json) for message in page.messages)
    return HttpResponse(f'{head[:-1]},"messages":[{body}]}}', content_type="application/json")


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
    return JsonResponse({"topic": topic, "count": len(clients), "clients": clients})


@endpoint("GET", "HEAD", auth=False)
async def openapi(request: HttpRequest) -> HttpResponse:
    """``GET openapi.json``: the OpenAPI 3.1 description of this API."""
    from megaphone.api.openapi import openapi_document

    return JsonResponse(openapi_document(request.build_absolute_uri("./")))


async def not_found(request: HttpRequest, rest: str = "") -> HttpResponse:
    """Any other path under the API prefix: a JSON 404."""
    return ApiError(Code.NOT_FOUND, f"no API route {request.path!r}").response()


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
