"""What is the native transport's own (``manage.py serve --transport native``), whatever transport
the rest of the tier runs on: the handshake checks it does itself, what it hands to the ASGI
application, and the per-address count it shares with it. The rest of its behaviour is the
ASGI transport's, and is tested by the whole end-to-end tier run on it
(``MEGAPHONE_TEST_TRANSPORT=native``, as ``make test`` does for the WebSocket tests)."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import os
import re
import socket
from collections.abc import Callable

import pytest
import websockets
from websockets.exceptions import InvalidStatus

from tests.conftest import ROOT, ServerProcess, timeout
from tests.sse_client import connect as sse_connect

pytestmark = pytest.mark.e2e


@pytest.fixture
def native(server_factory: Callable[..., ServerProcess]) -> Callable[..., ServerProcess]:
    def start(**overrides: object) -> ServerProcess:
        env = {
            "DJANGO_SETTINGS_MODULE": "tests.e2e.hardening_settings",
            "PYTHONPATH": str(ROOT),
            "MEGAPHONE_OVERRIDES": json.dumps({"DASHBOARD_INTERVAL": 0, **overrides}),
        }
        return server_factory(env=env, transport="native")

    return start


def raw_response(port: int, request: bytes) -> bytes:
    """The server's whole answer to ``request`` (it closes the connection after it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout(5)) as sock:
        sock.sendall(request)
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
    return answer


def upgrade(path: str, **headers: str) -> bytes:
    fields = {
        "Host": "127.0.0.1",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        "Sec-WebSocket-Version": "13",
        **{name.replace("_", "-"): value for name, value in headers.items()},
    }
    lines = "".join(f"{name}: {value}\r\n" for name, value in fields.items() if value)
    return f"GET {path} HTTP/1.1\r\n{lines}\r\n".encode()


def test_the_opening_handshake_is_checked_and_answered_per_rfc_6455(
    native: Callable[..., ServerProcess],
) -> None:
    server = native()
    key = base64.b64encode(os.urandom(16))
    with socket.create_connection(("127.0.0.1", server.port), timeout=timeout(5)) as sock:
        sock.sendall(upgrade("/ws/broadcast/", Sec_WebSocket_Key=key.decode()))
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(4096)
    expected = base64.b64encode(
        hashlib.sha1(key + b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest()
    )
    assert head.startswith(b"HTTP/1.1 101 ")
    assert b"\r\nSec-WebSocket-Accept: " + expected + b"\r\n" in head
    old = raw_response(server.port, upgrade("/ws/broadcast/", Sec_WebSocket_Version="8"))
    assert old.startswith(b"HTTP/1.1 426 ") and b"Sec-WebSocket-Version: 13\r\n" in old
    for bad_key in ("", "not base64!", base64.b64encode(b"short").decode()):
        answer = raw_response(server.port, upgrade("/ws/broadcast/", Sec_WebSocket_Key=bad_key))
        assert answer.startswith(b"HTTP/1.1 400 "), (bad_key, answer)
    assert "Traceback" not in server.log()


async def test_other_paths_go_to_the_asgi_application(
    native: Callable[..., ServerProcess],
) -> None:
    server = native()
    # Megaphone's router refuses an unknown path (HTTP 403) with its own log line: the
    # handshake went through the project's ASGI application, as on the default transport.
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(f"{server.ws_url}/ws/nowhere/")
    assert refused.value.response.status_code == 403
    assert "refused WebSocket handshake on /ws/nowhere/: no such endpoint" in server.log()
    # ... and the HTTP views are the application's.
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/native/") as client:
        await client.send("through the native transport")
        assert await client.recv() == "through the native transport"
    assert '"WebSocket /ws/broadcast/native/" [accepted]' not in server.log()


async def test_one_address_count_for_native_websockets_and_sse(
    native: Callable[..., ServerProcess],
) -> None:
    server = native(MAX_CONNECTIONS_PER_IP=2)
    url = f"{server.ws_url}/ws/broadcast/counted/"
    stream = await sse_connect(f"{server.http_url}/sse/broadcast/counted/")
    first = await websockets.connect(url)
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url)
    assert refused.value.response.status_code == 403
    await stream.close()
    await first.close()
    # Both given back when they ended (the WebSocket's when it closed, not after its handshake).
    for _ in range(3):
        held = [await websockets.connect(url), await websockets.connect(url)]
        await asyncio.gather(*(client.close() for client in held))
    assert len(re.findall("already has 2 connections", server.log())) == 1
