"""URLs of the HTTP API (:mod:`megaphone.api.views`), and ``token``: a connection token for the
session's user (:func:`megaphone.server.auth.connection_token`). :mod:`megaphone.urls` serves them
under
``api/``; to choose another prefix, include this module yourself::

    path("realtime/api/", include("megaphone.api_urls")),

Any other path under that prefix answers a JSON 404.
"""

from django.urls import path, re_path
from django.views.decorators.csrf import csrf_exempt

from megaphone.api import views
from megaphone.server.auth import connection_token

urlpatterns = [
    path("publish", views.publish, name="megaphone-api-publish"),
    path("publish/batch", views.publish_batch, name="megaphone-api-publish-batch"),
    path("topics", views.topics, name="megaphone-api-topics"),
    path("topics/<str:topic>/history", views.history, name="megaphone-api-history"),
    path("topics/<str:topic>/presence", views.presence, name="megaphone-api-presence"),
    path("users/<str:user>/disconnect", views.disconnect_user, name="megaphone-api-disconnect"),
    path("users/<str:user>/unsubscribe", views.unsubscribe_user, name="megaphone-api-unsubscribe"),
    path("users/<str:user>/recheck", views.recheck_user, name="megaphone-api-recheck"),
    path("token", connection_token, name="megaphone-token"),
    path("openapi.json", views.openapi, name="megaphone-api-openapi"),
    re_path(r"^(?P<rest>.*)$", csrf_exempt(views.not_found)),
]
