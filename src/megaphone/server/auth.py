"""Who is connecting: Django sessions for browser pages, signed tokens for other clients.

:func:`megaphone.asgi.application` wraps the WebSocket routes in :func:`AuthMiddlewareStack`,
behind the Origin check and the connection limit::

    "websocket": OriginValidator(ConnectionLimiter(AuthMiddlewareStack(websocket_router()))),

A browser page sends the session cookie, and ``scope["user"]`` is its user (Channels'
``AuthMiddlewareStack``). A client with ``?token=<token>`` in its URL (see
:mod:`megaphone.server.tokens`) is that token's user instead; a bad, forged or expired token
refuses the
handshake (HTTP 403, the reason logged, never the token). A token-authenticated connection is
closed with 4401 when its token expires. When a user logs out (Django's ``user_logged_out``
signal), every socket of that user, in every worker, is closed with 4401 within moments (see
:func:`close_user_connections`). A token issued before the logout stays valid until it expires:
keep ``TOKEN_TTL`` short.

:func:`connection_token` is the view a page or an app calls (with its session) to get a token.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

from channels.auth import AuthMiddlewareStack as ChannelsAuthMiddlewareStack
from channels.db import database_sync_to_async
from django.conf import settings
from django.contrib.auth import get_user_model
from django.http import HttpRequest, JsonResponse
from django.http.cookie import parse_cookie
from django.utils.functional import SimpleLazyObject
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET

from megaphone.conf import get_config
from megaphone.core.decoding import InvalidText, strict_query
from megaphone.core.logs import get_logger
from megaphone.server.guards import refuse_handshake
from megaphone.server.tokens import InvalidToken, issue_token, verify_token

logger = get_logger(__name__)

#: The scope key holding a token-authenticated connection's expiry (seconds since the epoch).
TOKEN_EXPIRES = "megaphone.token_expires"
#: The scope key holding the topics a connection's token names (the server subscribes them).
TOKEN_SUBSCRIPTIONS = "megaphone.token_subscriptions"
#: What :func:`close_user_connections` publishes on a user's control topic.
LOGOUT = "logout"


def user_name(scope: dict[str, Any]) -> str | None:
    """The authenticated user's name, when the project's middleware put a user in the scope."""
    user = scope.get("user")
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    return str(user.get_username())


def user_control_topic(user_pk: object) -> str:
    """The internal topic every authenticated connection of a user listens to (``$`` topics keep
    no history and are out of clients' reach)."""
    return f"$user:{user_pk}"


def close_user_connections(user: Any) -> None:
    """Close every WebSocket of ``user``, in every worker of the deployment, with 4401.

    Sync code only (it publishes with :func:`megaphone.publish`'s machinery); raises
    :class:`~megaphone.engine.publishing.PublishError` when the backend cannot take the order.
    """
    from megaphone.engine.publishing import publish_prepared

    publish_prepared(user_control_topic(user.pk), LOGOUT, False)


def on_user_logged_out(sender: Any, request: Any, user: Any, **kwargs: Any) -> None:
    """``user_logged_out`` receiver: close the user's sockets. A backend failure is logged, not
    raised: the logout itself must succeed."""
    if user is None or user.pk is None:
        return
    from megaphone.engine.publishing import PublishError

    try:
        close_user_connections(user)
    except PublishError as exc:
        logger.error("logout of user %s: could not close their sockets: %s", user.pk, exc)


@require_GET
@never_cache
def connection_token(request: HttpRequest) -> JsonResponse:
    """``GET``: a connection token for the session's user, ``{"token", "expires_in"}``; 401 JSON
    for an anonymous session. Connect with ``?token=<token>``."""
    if not request.user.is_authenticated:
        return JsonResponse(
            {"error": {"code": "unauthenticated", "message": "log in to get a connection token"}},
            status=401,
        )
    ttl = get_config().TOKEN_TTL
    return JsonResponse({"token": issue_token(request.user, ttl), "expires_in": ttl})


@database_sync_to_async
def active_user(user_id: str) -> Any:
    """The active user of primary key ``user_id``, read from the database; None if there is no
    such user, or it is not active."""
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
        if scope["type"] in ("websocket", "http"):
            query = scope.get("query_string", b"")
            # Decoded as every other query (percent escapes in names too: ``?%74oken=``), so
            # the parameter that authenticates is the one the logs redact.
            try:
                tokens = [v for k, v in strict_query(query.decode("latin-1")) if k == "token"]
            except InvalidText as exc:
                return await refuse_handshake(
                    scope, receive, send, reason=str(exc), label="query", log=logger
                )
            if tokens:
                refusal = None
                try:
                    claims = verify_token(tokens[-1])
                except InvalidToken as exc:
                    refusal = f"token refused: {exc}"
                else:
                    user = await active_user(claims.user_id)
                    if user is None:
                        refusal = "token refused: no active user"
                    else:
                        scope = {
                            **scope,
                            "user": user,
                            TOKEN_EXPIRES: claims.expires_at,
                            TOKEN_SUBSCRIPTIONS: claims.subscriptions,
                        }
                if refusal is not None:
                    return await refuse_handshake(
                        scope, receive, send, reason=refusal, label="token", log=logger
                    )
        return await self.inner(scope, receive, send)


class SessionAuthMiddleware:
    """ASGI middleware: Channels' session authentication, paid only by handshakes that carry the
    session cookie.

    A WebSocket handshake or an SSE request with the session cookie goes through Channels'
    ``CookieMiddleware``, ``SessionMiddleware`` and ``AuthMiddleware``: ``scope["user"]`` is the
    session's user, looked up in the database. Without the cookie there is no one to look up:
    ``scope["user"]`` is an ``AnonymousUser`` at once, with no thread-pool round trip, next to
    ``scope["cookies"]`` and an empty, unsaved ``scope["session"]``, as Channels would give (lazy,
    as Channels' is: the session store is built when first used).
    """

    def __init__(self, inner: Any) -> None:
        from django.contrib.auth.models import AnonymousUser  # needs the apps loaded

        self.inner = inner
        self.with_session = ChannelsAuthMiddlewareStack(inner)
        self.anonymous_user = AnonymousUser

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        if scope["type"] not in ("websocket", "http"):
            return await self.with_session(scope, receive, send)
        header = next((value for key, value in scope["headers"] if key == b"cookie"), None)
        cookies = parse_cookie(header.decode("latin-1")) if header is not None else {}
        if settings.SESSION_COOKIE_NAME in cookies:
            return await self.with_session(scope, receive, send)
        # Built when first used (rarely, by an anonymous client): not an object per connection.
        session = SimpleLazyObject(import_module(settings.SESSION_ENGINE).SessionStore)
        anonymous = {**scope, "cookies": cookies, "session": session, "user": self.anonymous_user()}
        return await self.inner(anonymous, receive, send)


def AuthMiddlewareStack(inner: Any) -> Any:
    """Session authentication, then token authentication, in front of ``inner``."""
    return SessionAuthMiddleware(TokenAuthMiddleware(inner))
