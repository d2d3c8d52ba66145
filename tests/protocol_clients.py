"""JSON-protocol clients over real sockets, for the tiers that run real servers.

:class:`AsyncClient` (``websockets``' asyncio client) for the e2e and security tests written as
coroutines; the security tier's synchronous ``Client`` is in ``tests/security/protocol_client.py``.
In-process tests use :class:`megaphone.testing.ProtocolCommunicator` instead. ``websockets``
decodes every text frame as strict UTF-8 and closes with 1007 on anything else, as a browser does.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import websockets

from tests.conftest import ServerProcess, timeout


class AsyncClient:
    """A protocol client: requests numbered and matched to their answer; frames that arrive
    before an answer are kept, in order, for :meth:`recv`."""

    def __init__(self, ws: websockets.ClientConnection) -> None:
        self.ws = ws
        self.next_id = 0
        self.hello: dict[str, Any] = {}
        self.kept: list[dict[str, Any]] = []

    @classmethod
    async def open(cls, server: ServerProcess, path: str = "/ws/connect/") -> AsyncClient:
        client = cls(await websockets.connect(f"{server.ws_url}{path}", max_queue=None))
        client.hello = await client.recv()
        assert client.hello["type"] == "connected", client.hello
        return client

    def new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    async def send(self, **request: Any) -> int:
        """Send ``request`` with a fresh id, without waiting for its answer; return the id."""
        request_id = self.new_id()
        await self.ws.send(json.dumps({"id": request_id, **request}))
        return request_id

    async def send_text(self, text: str) -> None:
        await self.ws.send(text)

    async def _next(self, seconds: float) -> dict[str, Any]:
        return json.loads(await asyncio.wait_for(self.ws.recv(), timeout(seconds)))  # type: ignore[no-any-return]

    async def recv(self, seconds: float = 5) -> dict[str, Any]:
        """The next frame (kept ones first)."""
        return self.kept.pop(0) if self.kept else await self._next(seconds)

    async def answer(self, request_id: int, seconds: float = 5) -> dict[str, Any]:
        """The reply, error or pong to ``request_id``; frames before it are kept."""
        for index, frame in enumerate(self.kept):
            if frame.get("id") == request_id and frame["type"] in ("reply", "error", "pong"):
                return self.kept.pop(index)
        while True:
            frame = await self._next(seconds)
            if frame.get("id") == request_id and frame["type"] in ("reply", "error", "pong"):
                return frame
            self.kept.append(frame)

    async def result(self, **request: Any) -> dict[str, Any]:
        """Send ``request``; its reply's ``result`` (an error fails the test)."""
        answer = await self.answer(await self.send(**request))
        assert answer["type"] == "reply", answer
        return answer["result"]  # type: ignore[no-any-return]

    async def close(self) -> None:
        await self.ws.close()
