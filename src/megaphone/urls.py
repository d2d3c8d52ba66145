"""Every HTTP endpoint of Megaphone, in one include::

    # mysite/urls.py
    path("", include("megaphone.urls")),

serves, under that prefix:

* ``megaphone/dashboard/``: the live staff dashboard (:mod:`megaphone.contrib.dashboard`; log in as
a
  staff user, through the admin's login page);
* ``healthz``, ``readyz``, ``metrics``: liveness, readiness and Prometheus figures
  (:mod:`megaphone.contrib.health`);
* ``api/``: the HTTP API and ``api/token`` (:mod:`megaphone.api_urls`; any other path under
  ``api/`` answers a JSON 404).

A project that wants them apart includes ``megaphone.contrib.health`` and ``megaphone.api_urls`` and
routes :func:`megaphone.contrib.dashboard.dashboard` itself.
"""

from django.urls import include, path

from megaphone.contrib.dashboard import dashboard

urlpatterns = [
    path("megaphone/dashboard/", dashboard, name="megaphone-dashboard"),
    path("", include("megaphone.contrib.health")),
    path("api/", include("megaphone.api_urls")),
]
