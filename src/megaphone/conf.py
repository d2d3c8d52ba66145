"""Megaphone's settings, read in one place.

A project configures Megaphone with one dict in its Django settings::

    MEGAPHONE = {"MAX_MESSAGE_SIZE": 128 * 1024}

Every key is optional. :class:`Config` declares them once: each with its type and limits (msgspec
``Meta``), the id of the system check that refuses a bad value (:class:`Check`), its default and
its meaning; :data:`SETTINGS` is that declaration, read by :mod:`megaphone.checks`, and
:data:`DEFAULTS` the defaults. No other module reads ``django.conf.settings`` for Megaphone's
keys: they call :func:`get_config`, which is cached and cleared when a test overrides the setting.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from functools import cache, lru_cache
from typing import Annotated, Any, get_args, get_origin, get_type_hints

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver
from msgspec import Meta, Struct


@dataclass(frozen=True, slots=True)
class Check:
    """The system check that refuses a setting's bad value: its stable id (docs/settings.md)."""

    id: str


# The kinds of value, with their limits; a check's hint is written from them.
PositiveInt = Annotated[int, Meta(ge=1)]
Count = Annotated[int, Meta(ge=0)]
Seconds = Annotated[float, Meta(gt=0)]
SecondsOrZero = Annotated[float, Meta(ge=0)]
PerSecond = Annotated[float, Meta(ge=0)]

_BOUND = Check("megaphone.E003")
_API = Check("megaphone.E031")
_RATE = Check("megaphone.E050")
_SECONDS = Check("megaphone.E013")
_SWITCH = Check("megaphone.E014")


@dataclass(frozen=True, slots=True)
class Config:
    #: Where messages cross processes and where history lives: ``memory://`` (one process) or
    #: ``redis://host:port/db``, ``redis+sentinel://...``, ``redis+cluster://...``,
    #: ``postgres://user@host:port/db``
    #: (see :mod:`megaphone.backends`). Defaults to the
    #: ``MEGAPHONE_BACKEND`` environment variable when set, else to ``REDIS_URL``.
    BACKEND: Annotated[
        str,
        Meta(
            description="a backend URL (memory://, redis://host:6379/0, "
            "redis+sentinel://host:26379,host:26379/service/0, postgres://user@host/db) "
            "or class path (package.module:ClassName)"
        ),
        Check("megaphone.E002"),
    ] = "memory://"
    #: Largest message a client may send, in bytes (text is counted UTF-8 encoded). A larger one
    #: closes that client's connection with 1009; nothing of it is buffered or delivered.
    MAX_MESSAGE_SIZE: Annotated[PositiveInt, _BOUND] = 64 * 1024
    #: Bound on one connection's queue of undelivered frames, in messages and in bytes. A client
    #: that falls further behind is closed with 4408 (slow consumer) and may resume from its offset.
    OUTBOX_MAX_MESSAGES: Annotated[PositiveInt, _BOUND] = 512
    OUTBOX_MAX_BYTES: Annotated[PositiveInt, _BOUND] = 8 * 1024 * 1024
    #: History kept per topic for recovery: at most this many messages, none older than the TTL.
    HISTORY_SIZE: Annotated[PositiveInt, _BOUND] = 1000
    HISTORY_TTL: Annotated[SecondsOrZero, _SECONDS] = 600.0
    #: Bound on the history the in-memory backend keeps, all topics together, in bytes (each
    #: message counts its payload plus about 200 bytes). Over it, messages are evicted in the
    #: order they would expire (oldest first when topics share a TTL); recovery across an
    #: evicted message answers ``recovered: false``. On Redis, bound memory with ``maxmemory``.
    HISTORY_MAX_BYTES: Annotated[PositiveInt, _BOUND] = 64 * 1024 * 1024
    #: Publish-rate limit per connection: a token bucket refilled at PUBLISH_RATE messages per
    #: second, holding at most PUBLISH_BURST. Over it, the connection is closed with 4429.
    #: 0 disables the limit.
    PUBLISH_RATE: Annotated[PerSecond, _RATE] = 100.0
    PUBLISH_BURST: Annotated[PositiveInt, _RATE] = 1000
    #: Open WebSocket connections allowed per client IP address, per worker process (0: no
    #: limit). Behind a proxy, run the server with --proxy-headers or every client shares the
    #: proxy's address. Over it, the handshake is refused (HTTP 403).
    MAX_CONNECTIONS_PER_IP: Annotated[Count, Check("megaphone.E043")] = 0
    #: First threshold of Python's cyclic garbage collector in a worker serving clients: how
    #: many container objects are allocated between two young collections (Python's default:
    #: 700). A worker holding thousands of connections has a large heap of long-lived objects,
    #: and with Python's threshold every object alive across a backend round trip (a publish in
    #: flight) is soon promoted to the oldest generation; once a quarter of the heap has been
    #: promoted that way, Python walks the whole heap (half a second at 10,000 connections).
    #: A higher threshold lets those objects die young. Raised, never lowered; 0: leave it.
    GC_THRESHOLD: Annotated[Count, Check("megaphone.E044")] = 50_000
    #: Dead-connection detection: the server pings every PING_INTERVAL seconds and closes a
    #: connection that has not answered within PING_TIMEOUT seconds (``manage.py serve``).
    PING_INTERVAL: Annotated[Seconds, _SECONDS] = 20.0
    PING_TIMEOUT: Annotated[Seconds, _SECONDS] = 20.0
    #: Seconds between the comments (``: ping``) an idle SSE stream gets, so that proxies and
    #: load balancers do not close it.
    SSE_HEARTBEAT: Annotated[Seconds, _SECONDS] = 15.0
    #: Seconds a client has, after connecting, to send a whole request head (a WebSocket
    #: handshake, say); slower, it is dropped (``manage.py serve``).
    HANDSHAKE_TIMEOUT: Annotated[Seconds, _SECONDS] = 10.0
    #: Who may subscribe, publish, read history and presence, per topic glob: see
    #: :mod:`megaphone.server.permissions`. None applies its DEFAULT_PERMISSIONS.
    PERMISSIONS: Annotated[
        tuple[dict[str, Any], ...] | None,
        Meta(description="None or a list of rules (dicts): see megaphone.server.permissions"),
        Check("megaphone.E010"),
    ] = None
    #: Every worker publishes its figures for the live dashboard
    # (:mod:`megaphone.contrib.dashboard`)
    #: on the internal topic ``_megaphone.stats`` this often, in seconds, its rates averaged
    #: over its last 5 snapshots; the topic keeps ten minutes of them. 0 turns it off.
    DASHBOARD_INTERVAL: Annotated[SecondsOrZero, _SECONDS] = 2.0
    #: Every serving worker relays, this often in seconds, the messages published inside a
    #: transaction that committed and were not relayed by their own process (it died between
    #: the commit and the relay, or the backend was down), once they are that old: see
    #: :mod:`megaphone.backends.transactional`. 0 turns the relay off.
    TRANSACTION_RELAY_INTERVAL: Annotated[SecondsOrZero, _SECONDS] = 1.0
    #: Lifetime in seconds of the connection tokens issued by :mod:`megaphone.server.tokens`.
    TOKEN_TTL: Annotated[Seconds, _SECONDS] = 300.0
    #: Origins a browser page may connect from besides the handshake's own (same scheme, host
    #: and port, the host in ``ALLOWED_HOSTS``) and Django's ``CSRF_TRUSTED_ORIGINS``: full
    #: origins as in the latter, e.g. ``["https://app.example.com", "https://*.example.com"]``;
    #: ``["*"]`` allows every origin. A client that sends no Origin header (wscat, scripts,
    #: servers) is always accepted. See :mod:`megaphone.server.origins`.
    ALLOWED_ORIGINS: Annotated[
        tuple[str, ...],
        Meta(description='a list of full origins, e.g. ["https://app.example.com"]'),
        Check("megaphone.E040"),
    ] = ()
    #: Seconds ``megaphone.publish()`` / ``apublish()`` wait for the backend to accept a message
    #: before raising :class:`megaphone.PublishUnavailable` (the message may still go out).
    PUBLISH_TIMEOUT: Annotated[Seconds, _API] = 5.0
    #: Keys of the HTTP API (``Authorization: Bearer <key>``). A list of keys allowed on every
    #: topic, or a dict ``{key: [topic pattern, ...]}`` (``fnmatch`` patterns, e.g. ``"orders.*"``)
    #: restricting each key. Empty: the HTTP API refuses every request with 401.
    API_KEYS: Annotated[
        tuple[str, ...] | dict[str, tuple[str, ...]],
        Meta(description="a list of keys (strings), or a dict of key -> list of topic patterns"),
        Check("megaphone.E030"),
    ] = ()
    #: Per-key rate limit of the HTTP API, per process: a token bucket refilled at
    #: ``API_RATE_LIMIT`` messages per second holding at most ``API_RATE_BURST``. ``None``: off.
    API_RATE_LIMIT: Annotated[Annotated[float, Meta(gt=0)] | None, _API] = 100.0
    API_RATE_BURST: Annotated[PositiveInt, _API] = 500
    #: Most messages in one ``POST api/publish/batch`` request, and largest request body of the
    #: HTTP API in bytes (each message is also held to ``MAX_MESSAGE_SIZE``; a body is also held
    #: to ``MAX_REQUEST_BODY``, before the API reads it).
    API_BATCH_MAX: Annotated[PositiveInt, _API] = 100
    API_MAX_BODY_SIZE: Annotated[PositiveInt, _API] = 2621440
    #: Largest HTTP request body, in bytes, on every path of the application that
    #: :func:`megaphone.asgi.application` builds
    # (:class:`megaphone.server.bodylimit.RequestBodyLimit`):
    #: over it, 413 before the body is read. 2.5 MiB, Django's ``FILE_UPLOAD_MAX_MEMORY_SIZE``
    #: and ``DATA_UPLOAD_MAX_MEMORY_SIZE``: a body Django takes stays in memory, so no request
    #: body touches the disk. Raise it if your views take larger uploads (Django spools those to
    #: temporary files). None: no limit (Django reads, and spools to disk, any body).
    MAX_REQUEST_BODY: Annotated[PositiveInt | None, Check("megaphone.E041")] = 2621440
    #: Presence (who is subscribed) is tracked on every topic when True; ``TOPICS`` may turn it
    #: on or off per topic. Join/leave events are sent to subscribers when ``JOIN_LEAVE`` is True
    #: (they need presence on too).
    PRESENCE: Annotated[bool, _SWITCH] = False
    JOIN_LEAVE: Annotated[bool, _SWITCH] = False
    #: Join/leave events of a topic are coalesced over windows this long, in seconds, per
    #: process: at most one batch per window, net of what cancelled out (see
    #: :mod:`megaphone.engine.joinleave`). 0 still coalesces what one loop turn announced.
    JOIN_LEAVE_INTERVAL: Annotated[SecondsOrZero, Check("megaphone.E012")] = 1.0
    #: Seconds a presence entry lives in a shared backend (Redis) without being refreshed: an
    #: entry of a process that died without saying goodbye vanishes after this long.
    PRESENCE_TTL: Annotated[Seconds, _SECONDS] = 60.0
    #: Most missed messages a subscription recovers on resubscribe; a larger gap answers
    #: ``recovered: false``. They are sent paced by the client, half an outbox at a time.
    RECOVERY_MAX_MESSAGES: Annotated[PositiveInt, _BOUND] = 1000
    #: Most topics one connection of the protocol endpoint (``/ws/connect/``) may subscribe to.
    MAX_SUBSCRIPTIONS: Annotated[PositiveInt, _BOUND] = 256
    #: Subscribe/unsubscribe-rate limit per connection of ``/ws/connect/``: a token bucket
    #: refilled at SUBSCRIBE_RATE requests per second, holding at most SUBSCRIBE_BURST (enough
    #: to resubscribe every topic after a reconnect). Over it, the request gets ``rate_limited``;
    #: refusals are limited by a bucket of the same rate and burst, and a client past that one
    #: too (it went on without waiting) is closed with 4429. 0 disables the limit.
    SUBSCRIBE_RATE: Annotated[PerSecond, _RATE] = 20.0
    SUBSCRIBE_BURST: Annotated[PositiveInt, _RATE] = 512
    #: Per-topic overrides by glob pattern (``fnmatch``, case-sensitive), the first matching
    #: pattern in order wins, e.g. ``{"chat.*": {"history_size": 100, "presence": True}}``.
    #: Options: see :class:`TopicOptions`. Stored as a tuple of ``(pattern, options)`` pairs.
    #: Its shape only (pairs); the patterns and options are checked by ``checks.check_topics``.
    TOPICS: Annotated[
        tuple[tuple[Any, Any], ...],
        Meta(description='a dict of topic pattern -> options, e.g. {"chat.*": {"presence": True}}'),
        Check("megaphone.E020"),
    ] = ()


@dataclass(frozen=True, slots=True)
class Setting:
    """One setting, as :class:`Config` declares it."""

    name: str
    #: The type a value must have, with its limits (for :func:`msgspec.convert`).
    type: Any
    check: Check
    default: Any


def declare(config: type[Any]) -> dict[str, Setting]:
    """The settings a dataclass like :class:`Config` declares; :class:`TypeError` if a field
    has no :class:`Check` (a new setting must say which check refuses its bad values)."""
    hints = get_type_hints(config, include_extras=True)
    declared = {}
    for field in fields(config):
        hint = hints[field.name]
        checks = [m for m in get_args(hint)[1:] if isinstance(m, Check)]
        if get_origin(hint) is not Annotated or len(checks) != 1:
            raise TypeError(f"{field.name} declares no Check: every setting needs one")
        declared[field.name] = Setting(field.name, hint, checks[0], field.default)
    return declared


#: Every setting, by name: its type and limits, its check and its default.
SETTINGS: dict[str, Setting] = declare(Config)
#: Every setting with its default.
DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in SETTINGS.items()}


def _defaults_from_environment() -> dict[str, Any]:
    """``MEGAPHONE_BACKEND`` if set, else ``REDIS_URL``: the backend when the settings name none."""
    url = os.environ.get("MEGAPHONE_BACKEND") or os.environ.get("REDIS_URL")
    return {"BACKEND": url} if url else {}


def unknown_keys() -> list[str]:
    """Keys of the user's ``MEGAPHONE`` setting that Megaphone does not know (a typo, usually)."""
    return sorted(set(getattr(settings, "MEGAPHONE", {})) - set(DEFAULTS))


@cache
def get_config() -> Config:
    """The effective configuration: defaults, then ``MEGAPHONE_BACKEND`` or ``REDIS_URL``, then
    ``settings.MEGAPHONE``."""
    user = dict(getattr(settings, "MEGAPHONE", {}))
    values = {**DEFAULTS, **_defaults_from_environment(), **user}
    origins = values["ALLOWED_ORIGINS"]
    if origins is None or isinstance(origins, list | set | frozenset):
        values["ALLOWED_ORIGINS"] = tuple(origins or ())  # a string is left for the checks
    keys = values["API_KEYS"]
    if isinstance(keys, dict):
        values["API_KEYS"] = {
            key: tuple(patterns) if isinstance(patterns, list | tuple) else patterns
            for key, patterns in keys.items()
        }
    elif isinstance(keys, str):
        values["API_KEYS"] = (keys,)
    elif isinstance(keys, list | tuple | set | frozenset):
        values["API_KEYS"] = tuple(keys)  # anything else is left for the checks
    topics = values["TOPICS"]
    if isinstance(topics, dict):
        values["TOPICS"] = tuple(
            (pattern, dict(options) if isinstance(options, dict) else options)
            for pattern, options in topics.items()
        )
    return Config(**{name: values[name] for name in DEFAULTS})


class TopicOptions(Struct, frozen=True, forbid_unknown_fields=True):
    """What applies to one topic: the global settings, overridden by its ``TOPICS`` entry. The
    declaration of a ``TOPICS`` entry's options too: ``megaphone.E021`` refuses an entry that
    does not fit it (:func:`megaphone.checks.check_topics`)."""

    #: History kept for recovery: at most ``history_size`` messages, none older than
    #: ``history_ttl`` seconds.
    history_size: Count
    history_ttl: SecondsOrZero
    #: Track who is subscribed (``presence`` op); send join/leave events to subscribers.
    presence: bool
    join_leave: bool
    #: Keep history and offsets in the Django database: they survive a restart of every process.
    durable: bool = False
    #: Whether clients of the WebSocket endpoints may publish (server-side publishing always can).
    publish: bool = True
    #: A latest-value topic: a new subscriber of the protocol endpoint gets the topic's latest
    #: message first, with or without ``since`` (see :mod:`megaphone.server.session`).
    latest: bool = False


#: The options a ``TOPICS`` entry may set.
TOPIC_OPTIONS: tuple[str, ...] = TopicOptions.__struct_fields__


def base_options(config: Config) -> dict[str, Any]:
    """The options of a topic that no ``TOPICS`` entry matches: the global settings."""
    return {
        "history_size": config.HISTORY_SIZE,
        "history_ttl": config.HISTORY_TTL,
        "presence": config.PRESENCE,
        "join_leave": config.JOIN_LEAVE,
    }


@lru_cache(maxsize=4096)
def topic_options(topic: str) -> TopicOptions:
    """The options of ``topic``: the first ``TOPICS`` pattern matching it, over the defaults."""
    config = get_config()
    values = base_options(config)
    for pattern, options in config.TOPICS:
        if isinstance(pattern, str) and isinstance(options, dict) and fnmatchcase(topic, pattern):
            values.update({k: v for k, v in options.items() if k in TOPIC_OPTIONS})
            break
    values["history_ttl"] = float(values["history_ttl"])
    return TopicOptions(**values)


@receiver(setting_changed)
def _clear_config_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == "MEGAPHONE":
        get_config.cache_clear()
        topic_options.cache_clear()
