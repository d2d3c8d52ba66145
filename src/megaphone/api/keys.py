"""Who calls the HTTP API: API keys (``MEGAPHONE["API_KEYS"]``) and each key's rate limit.

A caller sends ``Authorization: Bearer <key>``; :func:`authenticate` compares it in constant time
with every configured key. A key listed with topic patterns may only use the topics they match.
Each key has a token bucket per process (:class:`megaphone.core.ratelimit.TokenBucket`, the one
the WebSocket connections use), of ``API_RATE_LIMIT`` messages per second and ``API_RATE_BURST``
at once; a batch takes one token per message (:func:`rate_limit`).
"""

from __future__ import annotations

import hmac
import threading
from dataclasses import dataclass
from fnmatch import fnmatchcase

from django.http import HttpRequest

from megaphone.api.errors import ApiError, Code
from megaphone.conf import get_config
from megaphone.core.ratelimit import TokenBucket
from megaphone.server.permissions import Service


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


def require_topic(key: ApiKey, topic: str, allowed: bool | None = None) -> None:
    """Refuse (403) unless ``allowed`` (by default: the key may use ``topic``)."""
    if not (key.allows(topic) if allowed is None else allowed):
        raise ApiError(Code.FORBIDDEN_TOPIC, f"this API key may not use topic {topic!r}")


#: Each key's bucket, by its position in API_KEYS, with the (rate, burst) it was made for: a
#: bucket is made anew when the settings change.
_buckets: dict[int, tuple[tuple[float, int], TokenBucket]] = {}
_buckets_lock = threading.Lock()


def rate_limit(key: ApiKey, cost: int) -> None:
    """Take ``cost`` tokens from ``key``'s bucket, or refuse (429, ``Retry-After``)."""
    config = get_config()
    if not config.API_RATE_LIMIT:
        return
    limits = (float(config.API_RATE_LIMIT), config.API_RATE_BURST)
    with _buckets_lock:
        entry = _buckets.get(key.index)
        if entry is None or entry[0] != limits:
            entry = _buckets[key.index] = (limits, TokenBucket(*limits))
        wait = entry[1].take(cost)
    if wait:
        raise ApiError(
            Code.RATE_LIMITED,
            f"over the rate limit of {limits[0]:g} messages per second for this key",
            {"Retry-After": str(max(1, int(wait + 0.999)))},
        )
