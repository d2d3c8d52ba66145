"""WebSocket URL patterns. Route them in your ASGI ``ProtocolTypeRouter``, not in ``urls.py``.

:func:`megaphone.asgi.application` builds the whole recommended stack, these routes included::

    # mysite/asgi.py
    import os

    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "mysite.settings")

    import megaphone.asgi

    application = megaphone.asgi.application()

To add routes of your own, pass ``websocket_urlpatterns=[*websocket_urlpatterns, *yours]``.
:func:`websocket_router` is the router it uses: those patterns, then :class:`WebSocketNotFound`
for any other path, so an unknown path is refused with HTTP 403 and one log line (Channels'
``URLRouter`` alone raises, and the server answers 500 with a traceback in the log). 403, not
404: a handshake closed before it is accepted is a 403 on every ASGI server, and the log line
says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from channels.routing import URLRouter
from django.urls import URLPattern, re_path

from megaphone.core.logs import get_logger
from megaphone.server.consumers import ENDPOINTS
from megaphone.server.guards import refuse_handshake

logger = get_logger(__name__)

websocket_urlpatterns = [re_path(route, consumer.as_asgi()) for route, consumer in ENDPOINTS]


class WebSocketNotFound:
    """ASGI application: refuses any WebSocket handshake with HTTP 403, logging one line:
    ``refused WebSocket handshake on <path>: no such endpoint``."""

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        await refuse_handshake(
            scope, receive, send, reason="no such endpoint", label="not_found", log=logger
        )


def websocket_router(patterns: Sequence[URLPattern] = websocket_urlpatterns) -> URLRouter:
    """Channels' ``URLRouter`` over ``patterns``, then :class:`WebSocketNotFound` for any other
    path."""
    # django-stubs types re_path's views as Django views; Channels routes ASGI apps with it.
    not_found = re_path(r"", WebSocketNotFound())  # type: ignore[arg-type]
    return URLRouter([*patterns, not_found])
