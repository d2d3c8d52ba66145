"""Who is connecting: Django sessions for browser pages, signed tokens for other clients.

Wrap the WebSocket routes in :func:`AuthMiddlewareStack`::

    "websocket": OriginValidator(ConnectionLimiter(AuthMiddlewareStack(URLRouter(routes)))),

A browser page sends the session cookie, and ``scope["user"]`` is its user (Channels'
``AuthMiddlewareStack``). A client with ``?token=<token>`` in its URL (see
:mod:`megaphone.tokens`) is that token's user instead; a bad, forged or expired token refuses the
handshake (HTTP 403, the reason logged, never the token). A token-authenticated connection is
closed with 4401 when its token expires. When a user logs out, every socket of that user, in every
worker, is closed with 4401 within moments (see :func:`close_user_connections`).
"""

from __future__ import annotations

import logging
from typing import Any
from urllib.parse import parse_qs

from channels.auth import AuthMiddlewareStack as ChannelsAuthMiddlewareStack
from channels.db import database_sync_to_async
from channels.security.websocket import WebsocketDenier
from django.contrib.auth import get_user_model

from . import metrics
from .tokens import InvalidToken, verify_token

logger = logging.getLogger("megaphone.auth")

#: The scope key holding a token-authenticated connection's expiry (seconds since the epoch).
TOKEN_EXPIRES = "megaphone.token_expires"


@database_sync_to_async
def _active_user(user_id: str) -> Any:
    model = get_user_model()
    try:
        user = model._default_manager.get(pk=user_id)
    except (model.DoesNotExist, ValueError):
        return None
    return user if user.is_active else None


class TokenAuthMiddleware:
    """ASGI middleware: ``?token=`` authenticates the connection as the token's user."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] == "websocket":
            tokens = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
            if tokens:
                refusal = None
                try:
                    claims = verify_token(tokens[-1])
                except InvalidToken as exc:
                    refusal = f"token refused: {exc}"
                else:
                    user = await _active_user(claims.user_id)
                    if user is None:
                        refusal = "token refused: no active user"
                    else:
                        scope = {**scope, "user": user, TOKEN_EXPIRES: claims.expires_at}
                if refusal is not None:
                    logger.warning("refused WebSocket handshake on %s: %s", scope["path"], refusal)
                    metrics.REFUSALS.labels("token").inc()
                    return await WebsocketDenier()(scope, receive, send)
        return await self.inner(scope, receive, send)


def AuthMiddlewareStack(inner: Any) -> Any:
    """Session authentication, then token authentication, in front of ``inner``."""
    return ChannelsAuthMiddlewareStack(TokenAuthMiddleware(inner))
