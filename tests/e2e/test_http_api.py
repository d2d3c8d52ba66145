"""Tier 3: the HTTP API of a real server publishes to its real WebSocket clients."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import websockets

from tests.conftest import ServerProcess, timeout

KEY = "e2e-api-key"


def call(
    server: ServerProcess, method: str, path: str, body: Any = None, key: str | None = KEY
) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"{server.http_url}{path}",
        method=method,
        data=None if body is None else json.dumps(body).encode(),
        headers={
            "Content-Type": "application/json",
            **({"Authorization": f"Bearer {key}"} if key else {}),
        },
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout(5)) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, json.loads(exc.read())


async def test_http_publish_reaches_websocket_clients_and_a_bad_key_is_refused(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(env={"MEGAPHONE_API_KEYS": f"other-key,{KEY}"})
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/news/") as subscriber:
        status, body = await asyncio.to_thread(
            call, server, "POST", "/api/publish", {"topic": "news", "data": {"title": "hi"}}
        )
        assert status == 200 and body["offset"] == 1
        assert await asyncio.wait_for(subscriber.recv(), timeout(5)) == '{"title":"hi"}'

        status, body = await asyncio.to_thread(
            call, server, "POST", "/api/publish", {"topic": "news", "data": "x"}, "bad-key"
        )
        assert (status, body["error"]["code"]) == (401, "invalid_api_key")
        status, body = await asyncio.to_thread(
            call, server, "POST", "/api/publish", {"topic": "news", "data": "x"}, None
        )
        assert (status, body["error"]["code"]) == (401, "missing_api_key")

        status, body = await asyncio.to_thread(call, server, "GET", "/api/topics/news/history")
        assert status == 200 and [m["data"] for m in body["messages"]] == [{"title": "hi"}]
        status, body = await asyncio.to_thread(call, server, "GET", "/api/topics")
        assert {"topic": "news", "subscribers": 1} in body["topics"]
        status, body = await asyncio.to_thread(call, server, "GET", "/api/openapi.json", None, None)
        assert status == 200 and body["openapi"] == "3.1.0"
