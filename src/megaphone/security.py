"""Handshake checks that sit in front of every Megaphone WebSocket endpoint.

:class:`ConnectionLimiter` caps open connections per client address (``MAX_CONNECTIONS_PER_IP``).

:class:`OriginValidator` refuses (HTTP 403) a handshake whose ``Origin`` header names a site that
is not allowed, so a page on a foreign site cannot open a socket with the visitor's cookies
(cross-site WebSocket hijacking). Unlike Channels' ``AllowedHostsOriginValidator``, a handshake
with *no* Origin header is accepted: browsers always send one, so its absence means a non-browser
client (wscat, a script, a server), which cookies do not follow.
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from channels.security.websocket import WebsocketDenier
from django.conf import settings
from django.http.request import validate_host

from . import metrics
from .conf import get_config

logger = logging.getLogger("megaphone.security")

# What Django's own host check allows when DEBUG is on and ALLOWED_HOSTS is empty.
_DEBUG_HOSTS = [".localhost", "127.0.0.1", "[::1]"]


def origin_allowed(origin: str) -> bool:
    """Whether a browser page from ``origin`` (e.g. ``https://example.com:8443``) may connect."""
    allowed_origins = get_config().ALLOWED_ORIGINS
    if allowed_origins is not None:
        return "*" in allowed_origins or origin in allowed_origins
    try:
        host = urlsplit(origin).hostname
    except ValueError:
        return False
    if not host:  # "null" (sandboxed pages, file://) and other non-URLs
        return False
    if ":" in host:
        host = f"[{host}]"
    allowed_hosts = settings.ALLOWED_HOSTS or (_DEBUG_HOSTS if settings.DEBUG else [])
    return validate_host(host, allowed_hosts)


def _header(scope: dict[str, Any], name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key == name:
            return value.decode("latin-1")
    return None


class OriginValidator:
    """ASGI middleware: WebSocket handshakes from a disallowed browser Origin get HTTP 403."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            origin = _header(scope, b"origin")
            if origin is not None and not origin_allowed(origin):
                logger.warning(
                    "refused WebSocket handshake on %s: Origin %r is not allowed",
                    scope.get("path"),
                    origin[:200],
                )
                metrics.REFUSALS.labels("origin").inc()
                return await WebsocketDenier()(scope, receive, send)
        return await self.application(scope, receive, send)


class ConnectionLimiter:
    """ASGI middleware: a handshake from an address that already has ``MAX_CONNECTIONS_PER_IP``
    open WebSocket connections in this process gets HTTP 403. Counts are per worker process."""

    def __init__(self, application: Any) -> None:
        self.application = application
        self.open: Counter[str] = Counter()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] != "websocket":
            return await self.application(scope, receive, send)
        address = (scope.get("client") or ("unknown",))[0]
        limit = get_config().MAX_CONNECTIONS_PER_IP
        if limit and self.open[address] >= limit:
            logger.warning(
                "refused WebSocket handshake on %s: %s already has %d connections",
                scope.get("path"),
                address,
                limit,
            )
            metrics.REFUSALS.labels("connections_per_ip").inc()
            return await WebsocketDenier()(scope, receive, send)
        self.open[address] += 1
        try:
            return await self.application(scope, receive, send)
        finally:
            self.open[address] -= 1
            if not self.open[address]:
                del self.open[address]
