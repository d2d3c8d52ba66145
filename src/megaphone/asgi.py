"""The ASGI application of a Django project with Megaphone, built in one line.

::

    # mysite/asgi.py
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

    import megaphone.asgi

    application = megaphone.asgi.application()

:func:`application` returns Channels' ``ProtocolTypeRouter`` with every guard Megaphone
recommends, outermost first:

* ``http``: :class:`~megaphone.server.bodylimit.RequestBodyLimit` (bodies over ``MAX_REQUEST_BODY``
  get 413 before they are read), then Django's ASGI handler (static files too, when asked);
* ``websocket``: :class:`~megaphone.server.guards.OriginValidator` (foreign browser origins: 403),
  :class:`~megaphone.server.guards.ConnectionLimiter` (``MAX_CONNECTIONS_PER_IP``: 403),
  :func:`~megaphone.server.auth.AuthMiddlewareStack` (session cookie or ``?token=``), then
  :func:`~megaphone.routing.websocket_router` (Megaphone's endpoints; any other path: 403);
* ``http`` requests for ``/sse/broadcast/...``: the Server-Sent Events streams
  (:mod:`megaphone.server.sse`), behind the same origin, connection-count and authentication
  guards as the WebSockets.

Call it at import time of the ASGI module: it sets Django up first (``get_asgi_application()``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from django.urls import URLPattern


def application(
    *,
    websocket_urlpatterns: Sequence[URLPattern] | None = None,
    static_files: bool | None = None,
) -> Any:
    """The project's ASGI application (see the module docstring).

    ``websocket_urlpatterns``: the WebSocket routes, by default Megaphone's
    (:data:`megaphone.routing.websocket_urlpatterns`; add yours to them). ``static_files``:
    serve ``STATIC_URL`` from the static files finders (Django's ``ASGIStaticFilesHandler``);
    by default while ``DEBUG`` is on and ``django.contrib.staticfiles`` is installed. In
    production, let the web server in front serve them (``docs/deploy.md``).
    """
    from django.core.asgi import get_asgi_application

    http = get_asgi_application()  # first: it sets Django up

    from channels.routing import ProtocolTypeRouter
    from django.apps import apps
    from django.conf import settings

    from megaphone.core.logs import ensure_request_errors_logged
    from megaphone.routing import websocket_router
    from megaphone.routing import websocket_urlpatterns as megaphone_patterns
    from megaphone.server.auth import AuthMiddlewareStack
    from megaphone.server.bodylimit import RequestBodyLimit
    from megaphone.server.guards import ConnectionLimiter, OriginValidator
    from megaphone.server.httpsession import HttpSessions, with_http_sessions
    from megaphone.server.sse import EventStreams, with_event_streams

    if static_files is None:
        static_files = settings.DEBUG and apps.is_installed("django.contrib.staticfiles")
    if static_files:
        from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

        http = ASGIStaticFilesHandler(http)
    # Again: setting Django up a second time (manage.py serve did it once) resets its loggers.
    ensure_request_errors_logged()
    patterns = megaphone_patterns if websocket_urlpatterns is None else websocket_urlpatterns
    websocket = ConnectionLimiter(AuthMiddlewareStack(websocket_router(patterns)))
    # The SSE streams, and the JSON protocol over HTTP (its stream and its POSTs): the same
    # guards, and the same per-address count (guards.OPEN_CONNECTIONS) as the WebSockets.
    streams = ConnectionLimiter(AuthMiddlewareStack(EventStreams()))
    sessions = ConnectionLimiter(AuthMiddlewareStack(HttpSessions()))
    http = with_http_sessions(RequestBodyLimit(http), OriginValidator(sessions))
    return ProtocolTypeRouter(
        {
            "http": with_event_streams(http, OriginValidator(streams)),
            "websocket": OriginValidator(websocket),
        }
    )
