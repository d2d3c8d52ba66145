"""Class 2, cross-site WebSocket hijacking: a page on another port, scheme or host of the same
machine cannot open a socket with the user's session cookie (HTTP 403), so it cannot read their
private ``user:<id>`` topic; the page's own origin, and an origin listed in ``ALLOWED_ORIGINS``,
are served."""

from __future__ import annotations

import json

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import ClientConnection, connect
from websockets.typing import Origin

from tests.conftest import ServerProcess, create_superuser, free_port, timeout
from tests.e2e.test_logout import Browser

from .conftest import Start

#: The first user of a fresh database.
PRIVATE_TOPIC = "user:1"


def open_with_cookie(server: ServerProcess, cookie: str, origin: str) -> ClientConnection:
    """A browser-like handshake on /ws/connect/: that Origin, the session cookie."""
    return connect(
        f"{server.ws_url}/ws/connect/",
        origin=Origin(origin),
        additional_headers={"Cookie": f"sessionid={cookie}"},
        open_timeout=timeout(5),
    )


def reads_private_topic(socket: ClientConnection) -> bool:
    """Subscribe to ``user:1``, publish on it, and see the message come back."""
    assert json.loads(socket.recv(timeout=timeout(5)))["type"] == "connected"
    socket.send(json.dumps({"op": "subscribe", "id": 1, "topic": PRIVATE_TOPIC}))
    reply = json.loads(socket.recv(timeout=timeout(5)))
    if reply.get("type") != "reply":
        return False
    socket.send(json.dumps({"op": "publish", "id": 2, "topic": PRIVATE_TOPIC, "data": "secret"}))
    frames = [json.loads(socket.recv(timeout=timeout(5))) for _ in range(2)]
    return any(f.get("type") == "message" and f.get("data") == "secret" for f in frames)


def alice_on(attacked: Start, **settings: object) -> tuple[ServerProcess, str]:
    """A server with those ``MEGAPHONE`` settings, and the session cookie of alice (user 1)."""
    server = attacked(**settings)
    create_superuser(server, "alice")
    alice = Browser(server)
    alice.log_in("alice")
    return server, alice.cookie("sessionid")


def assert_refused(server: ServerProcess, cookie: str, origin: str) -> None:
    with pytest.raises(InvalidStatus) as refused:
        open_with_cookie(server, cookie, origin)
    assert refused.value.response.status_code == 403, origin


def test_other_origins_of_the_same_host_are_refused_403(attacked: Start) -> None:
    server, cookie = alice_on(attacked)
    port = server.port
    for origin in (
        f"http://127.0.0.1:{free_port()}",  # another port: another app on the same host
        f"https://127.0.0.1:{port}",  # another scheme
        f"http://localhost:{port}",  # another host name (in ALLOWED_HOSTS) of the same machine
        "http://127.0.0.1",  # the default port
        f"http://127.0.0.1:{port}.evil.com",
        "null",  # a sandboxed frame or a file:// page
    ):
        assert_refused(server, cookie, origin)
    assert "is not allowed" in server.log()
    with open_with_cookie(server, cookie, f"http://127.0.0.1:{port}") as socket:
        assert reads_private_topic(socket)  # the page's own origin: the user's socket


def test_a_listed_origin_reads_the_private_topic_and_only_it(attacked: Start) -> None:
    listed = free_port()
    server, cookie = alice_on(attacked, ALLOWED_ORIGINS=[f"http://localhost:{listed}"])
    for origin in (f"http://127.0.0.1:{server.port}", f"http://localhost:{listed}"):
        with open_with_cookie(server, cookie, origin) as socket:
            assert reads_private_topic(socket), origin
    assert_refused(server, cookie, f"http://127.0.0.1:{listed}")  # the listed port, another host
    assert_refused(server, cookie, f"https://localhost:{listed}")
    # The cookie is what the check protects: without it, the same page cannot read user:1.
    own = Origin(f"http://127.0.0.1:{server.port}")
    with connect(f"{server.ws_url}/ws/connect/", origin=own) as anonymous:
        assert not reads_private_topic(anonymous)
