"""Handshake checks that sit in front of every Megaphone WebSocket endpoint.

:class:`ConnectionLimiter` caps open connections per client address (``MAX_CONNECTIONS_PER_IP``).

:class:`OriginValidator` refuses (HTTP 403) a handshake whose ``Origin`` header names another
origin than the handshake's own (scheme, host and port) and than those the settings list, so a
page on a foreign site, or on another port or scheme of the same host, cannot open a socket with
the visitor's cookies (cross-site WebSocket hijacking); the rule is in
:mod:`megaphone.server.origins`.
Unlike Channels' ``AllowedHostsOriginValidator``, a handshake with *no* Origin header is accepted:
browsers always send one, so its absence means a non-browser client (wscat, a script, a server),
which cookies do not follow.

:func:`refuse_handshake` is how every Megaphone check refuses a handshake: one log line with the
reason (see :func:`megaphone.core.logs.log_refusal`), a count in ``megaphone_refusals_total``, and
HTTP 403 (what the ASGI spec gives a handshake closed before it is accepted, on every server).
"""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from megaphone.conf import get_config
from megaphone.core import metrics
from megaphone.core.logs import get_logger, log_refusal
from megaphone.server.origins import header, origin_allowed

logger = get_logger(__name__)
_TEXT = [(b"content-type", b"text/plain; charset=utf-8")]
#: The scopes the guards check: WebSocket handshakes and, where they wrap the SSE endpoints,
#: the HTTP requests that open a stream.
GUARDED = ("websocket", "http")
#: Open connections per client address in this process, whatever carries them: WebSockets (on
#: either transport of ``manage.py serve``), SSE streams and HTTP sessions.
OPEN_CONNECTIONS: Counter[str] = Counter()


async def refuse_handshake(
    scope: dict[str, Any],
    receive: Any,
    send: Any,
    *,
    reason: str,
    label: str,
    log: logging.Logger = logger,
) -> None:
    """Refuse the WebSocket handshake of ``scope`` before accepting it (HTTP 403): log
    ``reason`` once on ``log`` and count it under ``label``. An HTTP request (an SSE stream's)
    gets a plain 403 response."""
    log_refusal(log, scope, reason)
    metrics.REFUSALS.labels(label).inc()
    if scope["type"] == "http":
        start = {"type": "http.response.start", "status": 403, "headers": _TEXT}
        await send(start)
        await send({"type": "http.response.body", "body": b"Forbidden\n"})
        return
    message = await receive()
    if message["type"] == "websocket.connect":  # else the client left already
        await send({"type": "websocket.close"})


class OriginValidator:
    """ASGI middleware: WebSocket handshakes (and HTTP requests, where it wraps the SSE
    endpoints) from a disallowed browser Origin get HTTP 403."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] in GUARDED:
            origin = header(scope, b"origin")
            if origin is not None and not origin_allowed(origin, scope):
                host = header(scope, b"host")
                reason = f"Origin {origin!r} is not allowed (Host {host!r})"
                return await refuse_handshake(scope, receive, send, reason=reason, label="origin")
        return await self.application(scope, receive, send)


class ConnectionLimiter:
    """ASGI middleware: a handshake from an address that already has ``MAX_CONNECTIONS_PER_IP``
    open connections in this process gets HTTP 403. Counts are per worker process."""

    def __init__(self, application: Any, open: Counter[str] | None = None) -> None:
        """``open``: the counts, :data:`OPEN_CONNECTIONS` unless given."""
        self.application = application
        self.open: Counter[str] = OPEN_CONNECTIONS if open is None else open

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] not in GUARDED:
            return await self.application(scope, receive, send)
        address = client_address(scope)
        refusal = over_limit(self.open, address)
        if refusal is not None:
            return await refuse_handshake(
                scope, receive, send, reason=refusal, label="connections_per_ip"
            )
        self.open[address] += 1
        try:
            return await self.application(scope, receive, send)
        finally:
            release_address(self.open, address)


def client_address(scope: dict[str, Any]) -> str:
    """The address :class:`ConnectionLimiter` counts ``scope``'s connection under."""
    return str((scope.get("client") or ("unknown",))[0])


def over_limit(open: Counter[str], address: str) -> str | None:
    """Why a new connection from ``address`` is refused, or None while it is under
    ``MAX_CONNECTIONS_PER_IP``."""
    limit = get_config().MAX_CONNECTIONS_PER_IP
    if limit and open[address] >= limit:
        return f"{address} already has {limit} connections"
    return None


def release_address(open: Counter[str], address: str) -> None:
    """One connection of ``address`` less in ``open``."""
    open[address] -= 1
    if not open[address]:
        del open[address]
