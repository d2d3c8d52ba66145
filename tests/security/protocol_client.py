"""A JSON-protocol client for the security tier: requests matched to their answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from websockets.sync.client import ClientConnection

from tests.conftest import timeout


class Client:
    """A JSON-protocol client: requests matched to their answer, every other frame kept."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.client = self._recv()["client"]
        self.frames: list[dict[str, Any]] = []
        self._ids = 0

    def _recv(self) -> dict[str, Any]:
        return json.loads(self.socket.recv(timeout=timeout(10)))  # type: ignore[no-any-return]

    def request(self, op: str, **fields: Any) -> dict[str, Any]:
        """Send ``op``; its reply, error or pong (frames before it are kept in :attr:`frames`)."""
        self._ids += 1
        self.socket.send(json.dumps({"op": op, "id": self._ids, **fields}))
        return self.until(
            lambda f: f["type"] in ("reply", "error", "pong") and f["id"] == self._ids
        )

    def until(self, wanted: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        """The first frame, kept or next, that is ``wanted`` (frames before it are kept)."""
        for index, kept in enumerate(self.frames):
            if wanted(kept):
                del self.frames[index]
                return kept
        while not wanted(received := self._recv()):
            self.frames.append(received)
        return received
