"""WebSocket URL patterns. Route them in your ASGI ``ProtocolTypeRouter``, not in ``urls.py``::

    from channels.routing import ProtocolTypeRouter, URLRouter
    from django.core.asgi import get_asgi_application

    django_asgi_app = get_asgi_application()  # first: it sets Django up

    from megaphone.routing import websocket_urlpatterns
    from megaphone.auth import AuthMiddlewareStack
from megaphone.security import ConnectionLimiter, OriginValidator

    application = ProtocolTypeRouter({
        "http": django_asgi_app,
        "websocket": OriginValidator(
        ConnectionLimiter(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
    ),
    })

``OriginValidator`` refuses browser pages from foreign sites; see :mod:`megaphone.security`.
"""

from django.urls import re_path

from .transports.channels import BroadcastConsumer, ProtocolConsumer

websocket_urlpatterns = [
    re_path(r"^ws/broadcast/$", BroadcastConsumer.as_asgi()),
    re_path(r"^ws/broadcast/(?P<topic>[^/]+)/$", BroadcastConsumer.as_asgi()),
    re_path(r"^ws/connect/$", ProtocolConsumer.as_asgi()),
]
