"""In-process clients of Megaphone's WebSocket endpoints, over Channels' communicator.

Both connect to an ASGI application (``megaphone.asgi.application()``, or the project's own
``ProtocolTypeRouter``) without a server or a socket, and are async context managers that
disconnect on exit. Every receive is bounded by a timeout scaled by
``MEGAPHONE_TEST_TIMEOUT_FACTOR``; none of them polls.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from types import TracebackType
from typing import Any, Self

from channels.testing import WebsocketCommunicator

from megaphone.testing.waits import scaled

Frame = dict[str, Any]


class ProtocolError(AssertionError):
    """The server answered a request with an error frame (its ``code`` and ``message``)."""

    def __init__(self, frame: Frame) -> None:
        super().__init__(f"{frame.get('code')}: {frame.get('message')} ({frame})")
        self.frame = frame
        self.code: str | None = frame.get("code")


class _Communicator:
    def __init__(
        self, application: Any, path: str, headers: list[tuple[bytes, bytes]] | None = None
    ) -> None:
        self.path = path
        self.websocket = WebsocketCommunicator(application, path, headers=headers)
        self.connected = False

    async def connect(self, timeout: float = 5) -> None:
        """Open the WebSocket; :class:`AssertionError` with the close code if it is refused."""
        connected, code = await self.websocket.connect(timeout=scaled(timeout))
        assert connected, f"{self.path}: connection refused (close code {code})"
        self.connected = True

    async def close(self) -> None:
        """Disconnect (a no-op if never connected or already closed)."""
        if not self.connected:
            return
        self.connected = False
        application = self.websocket.future
        if not application.done():
            await self.websocket.disconnect()
        elif not application.cancelled() and (error := application.exception()) is not None:
            raise error  # the application failed: say so rather than hide it

    async def receive_close(self, timeout: float = 5) -> int:
        """Wait for the server to close the socket; return the close code."""
        event = await self.websocket.receive_output(timeout=scaled(timeout))
        assert event["type"] == "websocket.close", f"expected a close, got {event}"
        self.connected = False
        return int(event.get("code", 1000))

    async def receive_nothing(self, timeout: float = 0.1) -> bool:
        """Whether nothing arrives within ``timeout`` seconds (not scaled: it is the time
        given to something that must not happen)."""
        return bool(await self.websocket.receive_nothing(timeout=timeout))

    async def __aenter__(self) -> Self:
        await self.connect()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.close()


class RawCommunicator(_Communicator):
    """A client of the raw endpoint ``/ws/broadcast/<topic>/`` (``topic`` ``broadcast``:
    ``/ws/broadcast/``). Every frame sent reaches every client of the topic, the sender too.

    Once :meth:`connect` returns, the client is subscribed: a message published then reaches it.
    """

    def __init__(
        self,
        application: Any,
        topic: str = "broadcast",
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        path = "/ws/broadcast/" if topic == "broadcast" else f"/ws/broadcast/{topic}/"
        super().__init__(application, path, headers)
        self.topic = topic

    async def send(self, data: str | bytes) -> None:
        """Send a text frame (``str``) or a binary frame (``bytes``)."""
        if isinstance(data, bytes):
            await self.websocket.send_to(bytes_data=data)
        else:
            await self.websocket.send_to(text_data=data)

    async def receive(self, timeout: float = 5) -> str | bytes:
        """The next frame: ``str`` for a text frame, ``bytes`` for a binary one."""
        event = await self.websocket.receive_output(timeout=scaled(timeout))
        assert event["type"] == "websocket.send", f"expected a frame, got {event}"
        text = event.get("text")
        return text if text is not None else bytes(event["bytes"])


class ProtocolCommunicator(_Communicator):
    """A client of the JSON protocol endpoint (``/ws/connect/``; see docs/protocol.md).

    :meth:`connect` reads the ``connected`` frame into :attr:`hello`. :meth:`request` numbers
    a request and returns its answer; frames that arrive before it (messages, presence
    events) are kept, in order, for :meth:`receive` and :meth:`wait_for_message`.
    """

    def __init__(
        self,
        application: Any,
        path: str = "/ws/connect/",
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        super().__init__(application, path, headers)
        self.hello: Frame = {}
        self.kept: list[Frame] = []
        self._ids = 0

    async def connect(self, timeout: float = 5) -> None:
        await super().connect(timeout)
        self.hello = await self._next(timeout)
        assert self.hello.get("type") == "connected", f"expected 'connected', got {self.hello}"

    async def _next(self, timeout: float) -> Frame:
        frame = json.loads(await self.websocket.receive_from(timeout=scaled(timeout)))
        assert isinstance(frame, dict), f"not a JSON object: {frame!r}"
        return frame

    async def send_json(self, frame: Frame) -> None:
        """Send ``frame`` as it is (no id added): to test what the server makes of it."""
        await self.websocket.send_to(text_data=json.dumps(frame))

    async def receive(
        self, wanted: Callable[[Frame], bool] | None = None, timeout: float = 5
    ) -> Frame:
        """The first frame, kept or next, for which ``wanted`` is true (any frame without
        it); frames skipped on the way are kept for later calls."""
        for index, frame in enumerate(self.kept):
            if wanted is None or wanted(frame):
                del self.kept[index]
                return frame
        while True:
            frame = await self._next(timeout)
            if wanted is None or wanted(frame):
                return frame
            self.kept.append(frame)

    @property
    def last_id(self) -> int:
        """The id of the last request sent (0: none yet)."""
        return self._ids

    async def send(self, op: str, **fields: Any) -> int:
        """Send request ``op`` with ``fields`` and a fresh id, without waiting for its answer
        (to pipeline requests); return the id."""
        self._ids += 1
        await self.send_json({"op": op, "id": self._ids, **fields})
        return self._ids

    async def request(self, op: str, timeout: float = 5, **fields: Any) -> Frame:
        """Send request ``op`` with ``fields`` and a fresh id; return its answer (a reply, an
        error or a pong), whatever arrives first."""
        request_id = await self.send(op, **fields)
        return await self.receive(
            lambda f: f.get("id") == request_id and f.get("type") in ("reply", "error", "pong"),
            timeout,
        )

    async def result(self, op: str, timeout: float = 5, **fields: Any) -> Any:
        """:meth:`request`, and the reply's ``result``; :class:`ProtocolError` on an error."""
        answer = await self.request(op, timeout, **fields)
        if answer["type"] == "error":
            raise ProtocolError(answer)
        return answer.get("result")

    async def subscribe(self, topic: str, **fields: Any) -> Any:
        """Subscribe to ``topic`` (``since``, ``presence``... as ``fields``); the reply's
        result. Messages published once it returns reach this client."""
        return await self.result("subscribe", topic=topic, **fields)

    async def unsubscribe(self, topic: str) -> Any:
        return await self.result("unsubscribe", topic=topic)

    async def publish(self, topic: str, data: Any, **fields: Any) -> Any:
        """Publish ``data`` (any JSON value) on ``topic``; the reply's result (its offset)."""
        return await self.result("publish", topic=topic, data=data, **fields)

    async def wait_for_message(
        self,
        topic: str | None = None,
        wanted: Callable[[Frame], bool] | None = None,
        timeout: float = 5,
    ) -> Frame:
        """The next ``message`` frame (of ``topic``, if given, and ``wanted``, if given)."""
        return await self.receive(
            lambda f: (
                f.get("type") == "message"
                and (topic is None or f.get("topic") == topic)
                and (wanted is None or wanted(f))
            ),
            timeout,
        )
