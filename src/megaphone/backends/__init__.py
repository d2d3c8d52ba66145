"""Backends: the cross-process bus and the history store, chosen by URL scheme or by class path.

``MEGAPHONE["BACKEND"]`` is either a URL whose scheme names a built-in backend:

* ``memory://`` -> :class:`megaphone.backends.memory.MemoryBackend` (one process, the default);
* ``redis://`` and ``rediss://`` -> :mod:`megaphone.backends.redis` (many processes and machines);
* ``redis+sentinel://host:port,host:port/<service>/<db>`` ->
  :mod:`megaphone.backends.redis_sentinel` (the same, on the master Sentinel names, following
  its failovers);
* ``postgres://`` and ``postgresql://`` -> :mod:`megaphone.backends.postgres` (the same, on one
  PostgreSQL database: LISTEN/NOTIFY and tables);
* ``redis+cluster://host:port,host:port/`` -> :mod:`megaphone.backends.redis_cluster` (the same,
  on a Redis Cluster: a topic on one shard, sharded pub/sub, resharding and failovers followed);

or the path of a class of the application's, ``package.module:ClassName`` (no ``://`` before
the colon), e.g. ``"myapp.backends:MyBackend"``: anything satisfying
:class:`~megaphone.backends.base.Backend`. Either is built as ``Class(value, **options)``, with
the whole setting as its ``url`` (a class of the application's reads what it needs from it or
from its own settings) and the options of :class:`~megaphone.backends.base.BaseBackend`.
Implementations are imported lazily, so the Redis and PostgreSQL clients are only needed when
they are used. A value that names nothing usable raises :class:`InvalidBackend` (the system checks
``megaphone.E002`` and ``megaphone.E005`` report it at startup).

Owns: :mod:`~.base` (the protocols and their errors), :mod:`~.memory`, :mod:`~.redis`,
:mod:`~.redis_sentinel`, :mod:`~.redis_cluster`, :mod:`~.postgres`, :mod:`~.recovery` (what a
reconnecting process missed: shared by Redis and PostgreSQL), :mod:`~.durable` (durable
topics: a wrapper choosing, per topic, another history store) and :mod:`~.database` (that
store, in the application's database).

May import: :mod:`megaphone.core`, :mod:`megaphone.conf` and :mod:`megaphone.models`.
"""

from __future__ import annotations

import re
from importlib import import_module
from typing import Any, Protocol, cast
from urllib.parse import urlsplit

from megaphone.backends.base import (
    Appended,
    Backend,
    BackendUnavailable,
    BaseBackend,
    Broker,
    ClusterTopics,
    HistoryPage,
    HistoryStore,
    PresenceStore,
)

__all__ = [
    "Appended",
    "Backend",
    "BackendUnavailable",
    "BaseBackend",
    "Broker",
    "ClusterTopics",
    "HistoryPage",
    "HistoryStore",
    "InvalidBackend",
    "PresenceStore",
    "backend_from_url",
    "missing_members",
]

_SCHEMES = {
    "memory": "megaphone.backends.memory:MemoryBackend",
    "redis": "megaphone.backends.redis:RedisBackend",
    "rediss": "megaphone.backends.redis:RedisBackend",
    "redis+sentinel": "megaphone.backends.redis_sentinel:RedisSentinelBackend",
    "redis+cluster": "megaphone.backends.redis_cluster:RedisClusterBackend",
    "postgres": "megaphone.backends.postgres:PostgresBackend",
    "postgresql": "megaphone.backends.postgres:PostgresBackend",
}

#: ``package.module:ClassName``: a backend class of the application's.
CLASS_PATH = re.compile(r"^(?P<module>[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)*):(?P<name>[A-Za-z_]\w*)$")


class InvalidBackend(ValueError):
    """``MEGAPHONE["BACKEND"]`` names no usable backend. ``by_path`` tells a class path of the
    application's (system check ``megaphone.E005``) from a URL (``megaphone.E002``)."""

    def __init__(self, message: str, *, by_path: bool) -> None:
        super().__init__(message)
        self.by_path = by_path


def _protocol_members(protocol: type) -> list[str]:
    """The public attributes and methods ``protocol`` declares, its bases' included."""
    names: dict[str, None] = {}
    for cls in reversed(protocol.__mro__):
        if cls in (object, Protocol) or not getattr(cls, "_is_protocol", False):
            continue
        for name in [*getattr(cls, "__annotations__", {}), *vars(cls)]:
            if not name.startswith("_"):
                names[name] = None
    return list(names)


def missing_members(backend: object) -> list[str]:
    """What ``backend`` lacks of :class:`~megaphone.backends.base.Backend`: checked once, when a
    class named by path is built, so that a wrong class fails at startup, not on first use."""
    return [name for name in _protocol_members(Backend) if not hasattr(backend, name)]


def _resolve(value: str) -> tuple[str, str, bool]:
    """``(module, class name, by path)`` of the backend ``value`` names."""
    if "://" not in value and (path := CLASS_PATH.match(value)):
        return path["module"], path["name"], True
    scheme = urlsplit(value).scheme
    if scheme not in _SCHEMES:
        raise InvalidBackend(
            f"unknown Megaphone backend {value!r}: use one of "
            + ", ".join(f"{s}://" for s in _SCHEMES)
            + ", or the path of a backend class, package.module:ClassName",
            by_path=False,
        )
    module_name, class_name = _SCHEMES[scheme].split(":")
    return module_name, class_name, False


def backend_from_url(url: str, **options: Any) -> Backend:
    """Build the backend named by ``url`` (see the module docstring).

    Raises :class:`InvalidBackend` (a :class:`ValueError`) for a value naming nothing usable:
    an unknown scheme, an invalid URL, a class path whose module does not import, whose name is
    not a class, or whose instance lacks members of :class:`~megaphone.backends.base.Backend`.
    ImportError is raised as it is for a built-in backend whose client library is missing.
    """
    module_name, class_name, by_path = _resolve(url)
    try:
        module = import_module(module_name)
    except ImportError as exc:
        if not by_path:
            raise
        raise InvalidBackend(f"cannot import {module_name!r}: {exc}", by_path=True) from exc
    backend_class = getattr(module, class_name, None)
    if not isinstance(backend_class, type):
        raise InvalidBackend(f"{module_name!r} has no class {class_name!r}", by_path=True)
    try:
        backend = backend_class(url, **options)
    except InvalidBackend:
        raise
    except (ValueError, TypeError) as exc:
        raise InvalidBackend(f"{class_name}({url!r}) failed: {exc}", by_path=by_path) from exc
    if missing := missing_members(backend):
        raise InvalidBackend(
            f"{module_name}.{class_name} is not a Megaphone backend: it lacks "
            + ", ".join(missing)
            + " (see megaphone.backends.base.Backend; BaseBackend provides the defaults)",
            by_path=by_path,
        )
    return cast(Backend, backend)
