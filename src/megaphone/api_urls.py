"""URLs of the HTTP API (:mod:`megaphone.http_api`), and ``token``: a connection token for the
session's user (:func:`megaphone.auth.connection_token`). :mod:`megaphone.urls` serves them under
``api/``; to choose another prefix, include this module yourself::

    path("realtime/api/", include("megaphone.api_urls")),

Any other path under that prefix answers a JSON 404.
"""

from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from . import http_api
from .auth import connection_token

urlpatterns = [
    path("publish", http_api.publish, name="megaphone-api-publish"),
    path("publish/batch", http_api.publish_batch, name="megaphone-api-publish-batch"),
    path("topics", http_api.topics, name="megaphone-api-topics"),
    path("topics/<str:topic>/history", http_api.history, name="megaphone-api-history"),
    path("topics/<str:topic>/presence", http_api.presence, name="megaphone-api-presence"),
    path("token", connection_token, name="megaphone-token"),
    path("openapi.json", http_api.openapi, name="megaphone-api-openapi"),
    re_path(r"^(?P<rest>.*)$", csrf_exempt(http_api.not_found)),
]
