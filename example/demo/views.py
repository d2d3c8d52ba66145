from django.http import HttpRequest, HttpResponse
from django.shortcuts import render


def index(request: HttpRequest) -> HttpResponse:
    """The demo page: a message box and the live list of messages on topic ``broadcast``."""
    return render(request, "demo/index.html")
