"""Megaphone's settings, read in one place.

A project configures Megaphone with one dict in its Django settings::

    MEGAPHONE = {"MAX_MESSAGE_SIZE": 128 * 1024}

Every key is optional; :data:`DEFAULTS` lists them with their defaults and meaning. No other
module reads ``django.conf.settings`` for Megaphone's keys: they call :func:`get_config`, which is
cached and cleared when a test overrides the setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from functools import cache, lru_cache
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver


@dataclass(frozen=True, slots=True)
class Config:
    #: Where messages cross processes and where history lives: ``memory://`` (one process) or
    #: ``redis://host:port/db``. Defaults to the ``REDIS_URL`` environment variable when set.
    BACKEND: str = "memory://"
    #: Largest message a client may send, in bytes (text is counted UTF-8 encoded). A larger one
    #: closes that client's connection with 1009; nothing of it is buffered or delivered.
    MAX_MESSAGE_SIZE: int = 64 * 1024
    #: Bound on one connection's queue of undelivered frames, in messages and in bytes. A client
    #: that falls further behind is closed with 4408 (slow consumer) and may resume from its offset.
    OUTBOX_MAX_MESSAGES: int = 512
    OUTBOX_MAX_BYTES: int = 8 * 1024 * 1024
    #: History kept per topic for recovery: at most this many messages, none older than the TTL.
    HISTORY_SIZE: int = 1000
    HISTORY_TTL: float = 600.0
    #: Bound on the history the in-memory backend keeps, all topics together, in bytes (each
    #: message counts its payload plus about 200 bytes). Over it, messages are evicted in the
    #: order they would expire (oldest first when topics share a TTL); recovery across an
    #: evicted message answers ``recovered: false``. On Redis, bound memory with ``maxmemory``.
    HISTORY_MAX_BYTES: int = 64 * 1024 * 1024
    #: Publish-rate limit per connection: a token bucket refilled at PUBLISH_RATE messages per
    #: second, holding at most PUBLISH_BURST. Over it, the connection is closed with 4429.
    #: 0 disables the limit.
    PUBLISH_RATE: float = 100.0
    PUBLISH_BURST: int = 1000
    #: Open WebSocket connections allowed per client IP address, per worker process (0: no
    #: limit). Behind a proxy, run the server with --proxy-headers or every client shares the
    #: proxy's address. Over it, the handshake is refused (HTTP 403).
    MAX_CONNECTIONS_PER_IP: int = 0
    #: Dead-connection detection: the server pings every PING_INTERVAL seconds and closes a
    #: connection that has not answered within PING_TIMEOUT seconds (``manage.py serve``).
    PING_INTERVAL: float = 20.0
    PING_TIMEOUT: float = 20.0
    #: Seconds between the comments (``: ping``) an idle SSE stream gets, so that proxies and
    #: load balancers do not close it.
    SSE_HEARTBEAT: float = 15.0
    #: Seconds a client has, after connecting, to send a whole request head (a WebSocket
    #: handshake, say); slower, it is dropped (``manage.py serve``).
    HANDSHAKE_TIMEOUT: float = 10.0
    #: Who may subscribe, publish, read history and presence, per topic glob: see
    #: :mod:`megaphone.server.permissions`. None applies its DEFAULT_PERMISSIONS.
    PERMISSIONS: tuple[dict[str, str], ...] | None = None
    #: Every worker publishes its figures for the live dashboard
    # (:mod:`megaphone.contrib.dashboard`)
    #: on the internal topic ``_megaphone.stats`` this often, in seconds, its rates averaged
    #: over its last 5 snapshots; the topic keeps ten minutes of them. 0 turns it off.
    DASHBOARD_INTERVAL: float = 2.0
    #: Lifetime in seconds of the connection tokens issued by :mod:`megaphone.server.tokens`.
    TOKEN_TTL: float = 300.0
    #: Origins a browser page may connect from besides the handshake's own (same scheme, host
    #: and port, the host in ``ALLOWED_HOSTS``) and Django's ``CSRF_TRUSTED_ORIGINS``: full
    #: origins as in the latter, e.g. ``["https://app.example.com", "https://*.example.com"]``;
    #: ``["*"]`` allows every origin. A client that sends no Origin header (wscat, scripts,
    #: servers) is always accepted. See :mod:`megaphone.server.origins`.
    ALLOWED_ORIGINS: tuple[str, ...] = ()
    #: Seconds ``megaphone.publish()`` / ``apublish()`` wait for the backend to accept a message
    #: before raising :class:`megaphone.PublishUnavailable` (the message may still go out).
    PUBLISH_TIMEOUT: float = 5.0
    #: Keys of the HTTP API (``Authorization: Bearer <key>``). A list of keys allowed on every
    #: topic, or a dict ``{key: [topic pattern, ...]}`` (``fnmatch`` patterns, e.g. ``"orders.*"``)
    #: restricting each key. Empty: the HTTP API refuses every request with 401.
    API_KEYS: tuple[str, ...] | dict[str, tuple[str, ...]] = ()
    #: Per-key rate limit of the HTTP API, per process: a token bucket refilled at
    #: ``API_RATE_LIMIT`` messages per second holding at most ``API_RATE_BURST``. ``None``: off.
    API_RATE_LIMIT: float | None = 100.0
    API_RATE_BURST: int = 500
    #: Most messages in one ``POST api/publish/batch`` request, and largest request body of the
    #: HTTP API in bytes (each message is also held to ``MAX_MESSAGE_SIZE``; a body is also held
    #: to ``MAX_REQUEST_BODY``, before the API reads it).
    API_BATCH_MAX: int = 100
    API_MAX_BODY_SIZE: int = 2621440
    #: Largest HTTP request body, in bytes, on every path of the application that
    #: :func:`megaphone.asgi.application` builds
    # (:class:`megaphone.server.bodylimit.RequestBodyLimit`):
    #: over it, 413 before the body is read. 2.5 MiB, Django's ``FILE_UPLOAD_MAX_MEMORY_SIZE``
    #: and ``DATA_UPLOAD_MAX_MEMORY_SIZE``: a body Django takes stays in memory, so no request
    #: body touches the disk. Raise it if your views take larger uploads (Django spools those to
    #: temporary files). None: no limit (Django reads, and spools to disk, any body).
    MAX_REQUEST_BODY: int | None = 2621440
    #: Presence (who is subscribed) is tracked on every topic when True; ``TOPICS`` may turn it
    #: on or off per topic. Join/leave events are sent to subscribers when ``JOIN_LEAVE`` is True
    #: (they need presence on too).
    PRESENCE: bool = False
    JOIN_LEAVE: bool = False
    #: Join/leave events of a topic are coalesced over windows this long, in seconds, per
    #: process: at most one batch per window, net of what cancelled out (see
    #: :mod:`megaphone.engine.joinleave`). 0 still coalesces what one loop turn announced.
    JOIN_LEAVE_INTERVAL: float = 1.0
    #: Seconds a presence entry lives in a shared backend (Redis) without being refreshed: an
    #: entry of a process that died without saying goodbye vanishes after this long.
    PRESENCE_TTL: float = 60.0
    #: Most missed messages a subscription recovers on resubscribe; a larger gap answers
    #: ``recovered: false``. They are sent paced by the client, half an outbox at a time.
    RECOVERY_MAX_MESSAGES: int = 1000
    #: Most topics one connection of the protocol endpoint (``/ws/connect/``) may subscribe to.
    MAX_SUBSCRIPTIONS: int = 256
    #: Subscribe/unsubscribe-rate limit per connection of ``/ws/connect/``: a token bucket
    #: refilled at SUBSCRIBE_RATE requests per second, holding at most SUBSCRIBE_BURST (enough
    #: to resubscribe every topic after a reconnect). Over it, the request gets ``rate_limited``;
    #: refusals are limited by a bucket of the same rate and burst, and a client past that one
    #: too (it went on without waiting) is closed with 4429. 0 disables the limit.
    SUBSCRIBE_RATE: float = 20.0
    SUBSCRIBE_BURST: int = 512
    #: Per-topic overrides by glob pattern (``fnmatch``, case-sensitive), the first matching
    #: pattern in order wins, e.g. ``{"chat.*": {"history_size": 100, "presence": True}}``.
    #: Options: see :class:`TopicOptions`. Stored as a tuple of ``(pattern, options)`` pairs.
    TOPICS: tuple[tuple[str, dict[str, Any]], ...] = ()


#: Every setting with its default.
DEFAULTS: dict[str, Any] = {f.name: f.default for f in fields(Config)}


def _defaults_from_environment() -> dict[str, Any]:
    redis_url = os.environ.get("REDIS_URL")
    return {"BACKEND": redis_url} if redis_url else {}


def unknown_keys() -> list[str]:
    """Keys of the user's ``MEGAPHONE`` setting that Megaphone does not know (a typo, usually)."""
    return sorted(set(getattr(settings, "MEGAPHONE", {})) - set(DEFAULTS))


@cache
def get_config() -> Config:
    """The effective configuration: defaults, then ``REDIS_URL``, then ``settings.MEGAPHONE``."""
    user = dict(getattr(settings, "MEGAPHONE", {}))
    values = {**DEFAULTS, **_defaults_from_environment(), **user}
    origins = values["ALLOWED_ORIGINS"]
    if origins is None or isinstance(origins, list | set | frozenset):
        values["ALLOWED_ORIGINS"] = tuple(origins or ())  # a string is left for the checks
    keys = values["API_KEYS"]
    if isinstance(keys, dict):
        values["API_KEYS"] = {key: tuple(patterns) for key, patterns in keys.items()}
    elif isinstance(keys, str):
        values["API_KEYS"] = (keys,)
    else:
        values["API_KEYS"] = tuple(keys)
    topics = values["TOPICS"]
    if isinstance(topics, dict):
        values["TOPICS"] = tuple(
            (pattern, dict(options) if isinstance(options, dict) else options)
            for pattern, options in topics.items()
        )
    return Config(**{name: values[name] for name in DEFAULTS})


@dataclass(frozen=True, slots=True)
class TopicOptions:
    """What applies to one topic: the global settings, overridden by its ``TOPICS`` entry."""

    #: History kept for recovery: at most ``history_size`` messages, none older than
    #: ``history_ttl`` seconds.
    history_size: int
    history_ttl: float
    #: Track who is subscribed (``presence`` op); send join/leave events to subscribers.
    presence: bool
    join_leave: bool
    #: Keep history and offsets in the Django database: they survive a restart of every process.
    durable: bool = False
    #: Whether clients of the WebSocket endpoints may publish (server-side publishing always can).
    publish: bool = True


#: The options a ``TOPICS`` entry may set, with the type each takes.
TOPIC_OPTION_TYPES: dict[str, type | tuple[type, ...]] = {
    "history_size": int,
    "history_ttl": (int, float),
    "presence": bool,
    "join_leave": bool,
    "durable": bool,
    "publish": bool,
}


@lru_cache(maxsize=4096)
def topic_options(topic: str) -> TopicOptions:
    """The options of ``topic``: the first ``TOPICS`` pattern matching it, over the defaults."""
    config = get_config()
    values: dict[str, Any] = {
        "history_size": config.HISTORY_SIZE,
        "history_ttl": float(config.HISTORY_TTL),
        "presence": config.PRESENCE,
        "join_leave": config.JOIN_LEAVE,
    }
    for pattern, options in config.TOPICS:
        if isinstance(pattern, str) and isinstance(options, dict) and fnmatchcase(topic, pattern):
            values.update({k: v for k, v in options.items() if k in TOPIC_OPTION_TYPES})
            break
    values["history_ttl"] = float(values["history_ttl"])
    return TopicOptions(**values)


@receiver(setting_changed)
def _clear_config_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == "MEGAPHONE":
        get_config.cache_clear()
        topic_options.cache_clear()
