"""ASGI entry point: HTTP goes to Django, WebSockets to Megaphone's routes.

WebSocket routes belong here, in the ProtocolTypeRouter, not in urls.py.
"""

import os

from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler
from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")
# Django sets itself up here, before the imports below. The demo serves its few static files
# itself; a production site lets its web server (nginx) serve them: see docs/deploy.md.
django_asgi_app = ASGIStaticFilesHandler(get_asgi_application())

from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from megaphone.auth import AuthMiddlewareStack  # noqa: E402
from megaphone.routing import websocket_urlpatterns  # noqa: E402
from megaphone.security import ConnectionLimiter, OriginValidator  # noqa: E402

application = ProtocolTypeRouter(
    {
        "http": django_asgi_app,
        "websocket": OriginValidator(
            ConnectionLimiter(AuthMiddlewareStack(URLRouter(websocket_urlpatterns)))
        ),
    }
)
