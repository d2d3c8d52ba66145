"""A bound on HTTP request bodies, enforced before anything reads them.

Django's ASGI handler reads a whole request body before any view runs, and spools it to a
temporary file past ``FILE_UPLOAD_MAX_MEMORY_SIZE``: without a bound in front of it, an anonymous
1 GB POST writes 1 GB to disk before its view answers 401. :class:`RequestBodyLimit` is that
bound, for every HTTP path of the application it wraps (:func:`megaphone.asgi.application` puts
it in front of Django):

* a request whose ``Content-Length`` is over ``MEGAPHONE["MAX_REQUEST_BODY"]`` is answered 413
  at once, from its headers: the application is not called, not a byte of the body is read (the
  server buffers at most its read-ahead, 64 KiB under uvicorn, in memory) and the connection is
  closed (``Connection: close``);
* a streamed (chunked) body is counted as the application reads it: the chunk that crosses the
  limit is not handed on; the application gets ``http.disconnect`` instead (Django stops reading
  and answers nothing), the client gets 413 and the connection is closed. (An application that
  answers before it has read the body, and so started its response already, gets the disconnect
  and no 413.)

The 413 body is JSON, ``{"error": {"code": "body_too_large", "message": ...}}``, the HTTP API's
error shape (``docs/http-api.md``). ``MAX_REQUEST_BODY = None`` turns the bound off.
"""

from __future__ import annotations

import json
from typing import Any

from megaphone.conf import get_config
from megaphone.core.logs import get_logger

logger = get_logger(__name__)

#: The error code of the 413 answer (the HTTP API's code for a body over its own limit).
BODY_TOO_LARGE = "body_too_large"


def _content_length(scope: dict[str, Any]) -> int | None:
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None  # the server refuses a malformed length before the application
    return None


class RequestBodyLimit:
    """ASGI middleware: HTTP request bodies over ``MAX_REQUEST_BODY`` bytes get 413 before they
    are read (see the module docstring); other scopes pass through untouched."""

    def __init__(self, application: Any) -> None:
        self.application = application

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> Any:
        limit = get_config().MAX_REQUEST_BODY
        if scope["type"] != "http" or limit is None:
            return await self.application(scope, receive, send)
        length = _content_length(scope)
        if length is not None and length > limit:
            logger.warning(
                "refused %s %s: Content-Length %d is over %d bytes",
                scope.get("method"),
                scope.get("path"),
                length,
                limit,
            )
            return await _too_large(send, limit)
        return await _LimitedRequest(self.application, scope, receive, send, limit).run()


async def _too_large(send: Any, limit: int) -> None:
    body = json.dumps(
        {"error": {"code": BODY_TOO_LARGE, "message": f"the body is over {limit} bytes"}}
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 413,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _LimitedRequest:
    """One request whose body is counted as the application reads it."""

    def __init__(self, application: Any, scope: Any, receive: Any, send: Any, limit: int) -> None:
        self.application = application
        self.scope = scope
        self.receive = receive
        self.send = send
        self.limit = limit
        self.received = 0
        self.over = False  # the body crossed the limit: the application only hears disconnects
        self.responded = False  # a response has started (the application's or the 413)
        self.refused = False  # the 413 went out: nothing the application sends goes out

    async def run(self) -> Any:
        return await self.application(self.scope, self._receive, self._send)

    async def _receive(self) -> Any:
        if self.over:
            return {"type": "http.disconnect"}
        message = await self.receive()
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if self.received > self.limit:
                self.over = True
                logger.warning(
                    "refused %s %s: streamed body over %d bytes",
                    self.scope.get("method"),
                    self.scope.get("path"),
                    self.limit,
                )
                if not self.responded:
                    self.responded = self.refused = True
                    await _too_large(self.send, self.limit)
                return {"type": "http.disconnect"}
        return message

    async def _send(self, message: Any) -> None:
        if self.refused:
            return
        if message["type"] == "http.response.start":
            self.responded = True
        await self.send(message)
