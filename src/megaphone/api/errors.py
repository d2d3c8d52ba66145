"""The HTTP API's errors: a stable ``code`` per cause, each with its HTTP status.

An error answers ``{"error": {"code": ..., "message": ...}}`` (:class:`megaphone.api.schemas.
Error`); the ``message`` is for humans and may change, the code and the status do not (see
docs/http-api.md).
"""

from __future__ import annotations

from typing import Any


class Code:
    """Stable error codes of the HTTP API, each with its HTTP status."""

    INVALID_JSON = "invalid_json"  # 400: the body is not JSON, or not valid UTF-8 / Unicode
    INVALID_REQUEST = "invalid_request"  # 400: a field missing, of the wrong type or value
    INVALID_TOPIC = "invalid_topic"  # 400: a topic name outside the rules
    INVALID_PARAMETER = "invalid_parameter"  # 400: a query parameter is bad (or not UTF-8)
    MISSING_API_KEY = "missing_api_key"  # 401: no ``Authorization: Bearer`` header
    INVALID_API_KEY = "invalid_api_key"  # 401: a key that is not in API_KEYS
    FORBIDDEN_TOPIC = "forbidden_topic"  # 403: the key's topic patterns do not match
    FORBIDDEN_USERS = "forbidden_users"  # 403: only a key for every topic may order users
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
    Code.FORBIDDEN_USERS: 403,
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
    """A refused request: the views answer it with its code's status, ``headers``, and
    ``extra`` members beside ``error`` (a batch's ``results``)."""

    def __init__(
        self, code: str, message: str, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.headers = headers or {}
        self.extra = extra
