"""The example project's URLs, plus ``/boom/``: a view that raises :class:`Boom`."""

from django.http import HttpRequest, HttpResponse
from django.urls import path

from example.urls import urlpatterns as example_urlpatterns


class Boom(RuntimeError):
    """The error ``/boom/`` raises: its name must reach the log, with the traceback."""


def boom(request: HttpRequest) -> HttpResponse:
    raise Boom("a view failed on purpose")


urlpatterns = [path("boom/", boom), *example_urlpatterns]
