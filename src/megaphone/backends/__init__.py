"""Backends: the cross-process bus and the history store, chosen by URL scheme.

``memory://`` -> :class:`megaphone.backends.memory.MemoryBackend` (one process, the default);
``redis://`` and ``rediss://`` -> :mod:`megaphone.backends.redis` (many processes and machines).
Implementations are imported lazily, so the Redis client is only needed when it is used.

Owns: :mod:`~.base` (the interface and its errors), :mod:`~.memory`, :mod:`~.redis` and
:mod:`~.durable` (history kept in the application's database).

May import: :mod:`megaphone.core`, :mod:`megaphone.conf` and :mod:`megaphone.models`.
"""

from __future__ import annotations

from collections.abc import Callable
from importlib import import_module
from urllib.parse import urlsplit

from megaphone.backends.base import Backend, BackendUnavailable, HistoryPage

__all__ = ["Backend", "BackendUnavailable", "HistoryPage", "backend_from_url"]

_SCHEMES = {
    "memory": "megaphone.backends.memory:MemoryBackend",
    "redis": "megaphone.backends.redis:RedisBackend",
    "rediss": "megaphone.backends.redis:RedisBackend",
}


def backend_from_url(url: str, **options: object) -> Backend:
    """Build the backend named by ``url``; raise ValueError for an unknown scheme."""
    scheme = urlsplit(url).scheme
    try:
        module_name, class_name = _SCHEMES[scheme].split(":")
    except KeyError:
        raise ValueError(
            f"unknown Megaphone backend {url!r}: use one of "
            + ", ".join(f"{s}://" for s in _SCHEMES)
        ) from None
    # Looked up by name: its keyword options are checked when it is called, not here.
    backend_class: Callable[..., Backend] = getattr(import_module(module_name), class_name)
    return backend_class(url, **options)
