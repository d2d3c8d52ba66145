"""ASGI entry point: HTTP goes to Django, WebSockets to Megaphone's routes, every request through
Megaphone's guards (request body limit, Origin check, connection limit, authentication): see
:mod:`megaphone.asgi`.

WebSocket routes belong here, in the ProtocolTypeRouter that builds, not in urls.py.
"""

import os

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "example.settings")

import megaphone.asgi

# The demo serves its few static files itself, DEBUG or not; a production site lets its web
# server (nginx) serve them: see docs/deploy.md.
application = megaphone.asgi.application(static_files=True)
