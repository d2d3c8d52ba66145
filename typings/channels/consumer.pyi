from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

from channels._asgi import Receive, Scope, Send
from channels.layers import BaseChannelLayer

def get_handler_name(message: dict[str, Any]) -> str: ...

class AsyncConsumer:
    channel_layer_alias: ClassVar[str]
    scope: Scope
    channel_layer: BaseChannelLayer | None
    channel_name: str
    channel_receive: Callable[[], Awaitable[dict[str, Any]]]
    base_send: Send
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None: ...
    async def dispatch(self, message: dict[str, Any]) -> None: ...
    async def send(self, message: dict[str, Any]) -> None: ...
    @classmethod
    def as_asgi(cls, **initkwargs: Any) -> Callable[[Scope, Receive, Send], Awaitable[None]]: ...
