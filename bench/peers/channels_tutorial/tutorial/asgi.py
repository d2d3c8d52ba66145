import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tutorial.settings")
django_asgi_app = get_asgi_application()

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from django.urls import re_path  # noqa: E402

from tutorial.consumers import BroadcastConsumer  # noqa: E402

websocket_urlpatterns = [
    re_path(r"^ws/broadcast/$", BroadcastConsumer.as_asgi()),
    re_path(r"^ws/broadcast/(?P<topic>[\w.-]+)/$", BroadcastConsumer.as_asgi()),
]

application = ProtocolTypeRouter(
    {"http": django_asgi_app, "websocket": URLRouter(websocket_urlpatterns)}
)
