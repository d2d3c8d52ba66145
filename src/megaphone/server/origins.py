"""Web origins, and which of them a browser page may open a WebSocket from.

An origin is a scheme, a host and a port (RFC 6454): ``https://app.example.com`` is
``("https", "app.example.com", 443)``; the default port of the scheme (http 80, https 443) is the
port when none is written. Two origins are the same when all three are equal, so a page on
another port, another scheme or another host of the same machine is another origin.

A browser's ``Origin`` is allowed (:func:`origin_allowed`) when it is

* the handshake's own origin (:func:`request_origin`): the scheme the request came with (``ws``
  is ``http``, ``wss`` is ``https``) and its ``Host`` header, host and port, provided that host is
  in ``ALLOWED_HOSTS`` (Django's rule; while ``DEBUG`` is on with ``ALLOWED_HOSTS`` empty,
  ``localhost``, ``127.0.0.1`` and ``[::1]``, as Django allows). Behind a proxy, the scheme is the
  ASGI server's (``manage.py serve`` and uvicorn take it from ``X-Forwarded-Proto`` when the proxy
  is in ``--forwarded-allow-ips``), or Django's ``SECURE_PROXY_SSL_HEADER`` when it is set; the
  host is ``X-Forwarded-Host`` when ``USE_X_FORWARDED_HOST`` is on. Just as Django's CSRF check;
* or listed in ``MEGAPHONE["ALLOWED_ORIGINS"]`` or Django's ``CSRF_TRUSTED_ORIGINS``, both in the
  form of the latter: full origins (``https://app.example.com``, ``http://localhost:3000``), where
  ``https://*.example.com`` also allows ``example.com`` and every subdomain, on the default port
  (Django's rule). A site that trusts an origin to post forms with its users' cookies trusts it
  with their sockets too. ``"*"`` in ``ALLOWED_ORIGINS`` allows every origin (no protection).

``null`` (sandboxed frames, ``file://`` pages) and anything that is not an ``http(s)`` origin are
refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.http.request import split_domain_port, validate_host

from megaphone.conf import get_config

DEFAULT_PORTS = {"http": 80, "https": 443}
#: What Django's own host check allows when DEBUG is on and ALLOWED_HOSTS is empty.
DEBUG_HOSTS = (".localhost", "127.0.0.1", "[::1]")
_HOST = re.compile(r"[a-z0-9-]+(\.[a-z0-9-]+)*\.?|\[[0-9a-f:.]+\]")
_WILDCARD = "*."


@dataclass(frozen=True, slots=True)
class Origin:
    """``scheme://host:port``; ``host`` lower-case, an IPv6 address in brackets."""

    scheme: str
    host: str
    port: int


@dataclass(frozen=True, slots=True)
class OriginPattern:
    """An allowed origin; with ``subdomains``, ``host`` and every subdomain of it."""

    scheme: str
    host: str
    port: int
    subdomains: bool = False

    def matches(self, origin: Origin) -> bool:
        if (origin.scheme, origin.port) != (self.scheme, self.port):
            return False
        if self.subdomains:
            return origin.host == self.host or origin.host.endswith("." + self.host)
        return origin.host == self.host


def _split(text: str, *, wildcard: bool) -> tuple[str, str, int, bool] | None:
    """(scheme, host, port, subdomains) of a serialised origin, or None if it is not one."""
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError:
        return None
    scheme, netloc = parts.scheme.lower(), parts.netloc.lower()
    if scheme not in DEFAULT_PORTS or parts.path or parts.query or parts.fragment or "@" in netloc:
        return None
    if text.endswith(("?", "#")):  # urlsplit drops an empty query or fragment
        return None
    host = netloc.rsplit(":", 1)[0] if port is not None or netloc.endswith(":") else netloc
    subdomains = wildcard and host.startswith(_WILDCARD)
    if subdomains:
        host = host[len(_WILDCARD) :]
    if not _HOST.fullmatch(host):
        return None
    port = DEFAULT_PORTS[scheme] if port is None else port
    return scheme, host.removesuffix("."), port, subdomains


def parse_origin(text: str) -> Origin | None:
    """The origin a browser's ``Origin`` header names; None for ``null`` and non-origins."""
    parts = _split(text, wildcard=False)
    return None if parts is None else Origin(*parts[:3])


def parse_pattern(text: str) -> OriginPattern | None:
    """An ``ALLOWED_ORIGINS`` / ``CSRF_TRUSTED_ORIGINS`` entry; None if it is not a full
    origin (``scheme://host[:port]``, the host possibly ``*.domain``)."""
    parts = _split(text, wildcard=True)
    return None if parts is None else OriginPattern(*parts)


def header(scope: Mapping[str, Any], name: bytes) -> str | None:
    """The first value of header ``name`` (lower-case) of an ASGI ``scope``, or None."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def _allowed_hosts() -> list[str]:
    return list(settings.ALLOWED_HOSTS) or (list(DEBUG_HOSTS) if settings.DEBUG else [])


def _scheme(scope: Mapping[str, Any]) -> str:
    proxy_header = settings.SECURE_PROXY_SSL_HEADER
    if proxy_header:
        name, secure_value = proxy_header
        value = header(scope, name.removeprefix("HTTP_").lower().replace("_", "-").encode())
        if value is not None:
            return "https" if value.split(",", 1)[0].strip() == secure_value else "http"
    return "https" if scope.get("scheme") in ("wss", "https") else "http"


def request_origin(scope: Mapping[str, Any]) -> Origin | None:
    """The origin of the handshake itself (see the module docstring); None when its host is
    missing, malformed or not in ``ALLOWED_HOSTS``."""
    host = None
    if settings.USE_X_FORWARDED_HOST:
        host = header(scope, b"x-forwarded-host")
    if host is None:
        host = header(scope, b"host")
    if not host:
        return None
    domain, port = split_domain_port(host.split(",", 1)[0].strip())
    if not domain or not validate_host(domain, _allowed_hosts()):
        return None
    scheme = _scheme(scope)
    return Origin(scheme, domain, int(port) if port else DEFAULT_PORTS[scheme])


@lru_cache(maxsize=8)
def _patterns(entries: tuple[str, ...]) -> tuple[OriginPattern, ...]:
    return tuple(p for p in map(parse_pattern, entries) if p is not None)


def _entries(values: object) -> tuple[str, ...]:
    """The strings of a list setting; nothing if it is not a list (the system checks say so)."""
    if not isinstance(values, list | tuple):
        return ()
    return tuple(value for value in values if isinstance(value, str))


def origin_allowed(origin: str, scope: Mapping[str, Any]) -> bool:
    """Whether a browser page from ``origin`` (the ``Origin`` header) may open the WebSocket
    whose ASGI ``scope`` this is."""
    listed = _entries(get_config().ALLOWED_ORIGINS)
    if "*" in listed:
        return True
    parsed = parse_origin(origin)
    if parsed is None:
        return False
    if parsed == request_origin(scope):
        return True
    trusted = listed + _entries(getattr(settings, "CSRF_TRUSTED_ORIGINS", ()))
    return any(pattern.matches(parsed) for pattern in _patterns(trusted))
