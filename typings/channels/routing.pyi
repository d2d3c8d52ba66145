from collections.abc import Mapping, Sequence

from channels._asgi import Application, Receive, Scope, Send
from django.urls import URLPattern, URLResolver

class ProtocolTypeRouter:
    application_mapping: Mapping[str, Application]
    def __init__(self, application_mapping: Mapping[str, Application]) -> None: ...
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...

class URLRouter:
    routes: list[URLPattern | URLResolver]
    def __init__(self, routes: Sequence[URLPattern | URLResolver]) -> None: ...
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...
