"""Class 6: a close is final (docs/security.md).

Once the server has decided to close a connection, nothing the client sent after that is handled
(the frames right behind the one that closed it are never published, on either endpoint), and a
second close racing the first (a rate-limit close, then a frame over the size limit in the same
burst) is a no-op: one close frame, no traceback in the server's log.
"""

from __future__ import annotations

import json
import struct
import threading
from collections.abc import Callable
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ServerProcess, create_superuser, timeout
from tests.e2e.rawws import CLOSE, TEXT, RawClient, frame
from tests.e2e.test_logout import Browser

TOPIC = "final"
BURST = 5
Start = Callable[..., ServerProcess]


def raw_burst(*payloads: bytes) -> bytes:
    return b"".join(frame(TEXT, payload) for payload in payloads)


def received_until_marker(server: ServerProcess, watcher: ClientConnection) -> list[str]:
    """What ``watcher`` (a raw client of :data:`TOPIC`) got, up to a marker another client
    publishes now: on one topic, everything published before the marker arrives before it."""
    with connect(f"{server.ws_url}/ws/broadcast/{TOPIC}/") as marker:
        marker.send("marker")
        received: list[str] = []
        while (text := watcher.recv(timeout=timeout(10))) != "marker":
            received.append(str(text))
    return received


def closed_after_burst(attacker: RawClient, sent: list[str]) -> int | None:
    """Connect ``attacker`` to :data:`TOPIC`, send ``sent`` in one burst, read until the
    server's close frame; its code."""
    assert attacker.handshake(f"/ws/broadcast/{TOPIC}/") == 101
    attacker.send(raw_burst(*(text.encode() for text in sent)))
    return attacker.read_until_close(timeout(10))[1]


def assert_in_order_without_gap(received: list[str], sent: list[str]) -> None:
    """``received`` is the first messages of ``sent``, in order: nothing after a refused one."""
    assert received == sent[: len(received)], received


@pytest.mark.parametrize("workers", [1, 2], ids=["memory", "redis-2-workers"])
def test_frames_behind_a_4429_are_never_published(
    attacked: Start, request: pytest.FixtureRequest, workers: int
) -> None:
    backend = request.getfixturevalue("redis_server").url if workers == 2 else None
    # Refilled fast enough that, when the close is decided, more tokens are already there.
    server = attacked(workers=workers, backend=backend, PUBLISH_RATE=1000, PUBLISH_BURST=BURST)
    sent = [f"m{n}" for n in range(200)]
    with connect(f"{server.ws_url}/ws/broadcast/{TOPIC}/") as watcher:
        with RawClient(server.port) as attacker:
            assert closed_after_burst(attacker, sent) == 4429
        received = received_until_marker(server, watcher)
    assert len(received) >= BURST
    assert_in_order_without_gap(received, sent)
    assert len(received) < len(sent)
    assert "Traceback" not in server.log()


def test_a_second_close_racing_the_first_is_a_no_op(attacked: Start) -> None:
    """Closed with 4429, with more frames over the rate right behind (each one a reason to close
    again), then a frame over ``MAX_MESSAGE_SIZE`` (the server's own reason to close, 1009)."""
    server = attacked(PUBLISH_RATE=0.001, PUBLISH_BURST=BURST, MAX_MESSAGE_SIZE=1024)
    sent = [f"m{n}" for n in range(BURST + 50)]
    with connect(f"{server.ws_url}/ws/broadcast/{TOPIC}/") as watcher:
        with RawClient(server.port) as attacker:
            assert closed_after_burst(attacker, sent) == 4429
            # Too big, then the closing handshake's reply.
            attacker.send(raw_burst(b"x" * 2048) + frame(CLOSE, struct.pack("!H", 1000)))
            after_close, second = attacker.read_until_close(timeout(10))
            assert (after_close, second) == ([], None)  # then the end: no second close frame
        received = received_until_marker(server, watcher)
    assert received == sent[:BURST]
    log = server.log()
    assert "Traceback" not in log
    assert "Unexpected ASGI message" not in log


class Publisher:
    """A protocol client publishing ``p0``, ``p1``... on :data:`TOPIC` as fast as it can, until
    the server closes it, while its replies are read on another thread."""

    def __init__(self, socket: ClientConnection) -> None:
        self.socket = socket
        self.replied: list[int] = []
        self.answered = threading.Event()  # set at the first reply
        self.close_code: int | None = None
        assert json.loads(socket.recv(timeout=timeout(10)))["type"] == "connected"
        self._reader = threading.Thread(target=self._read)
        self._reader.start()

    def _read(self) -> None:
        try:
            while True:
                answer: dict[str, Any] = json.loads(self.socket.recv())
                if answer["type"] == "reply":
                    self.replied.append(answer["id"])
                    self.answered.set()
        except ConnectionClosed as closed:
            self.close_code = closed.rcvd.code if closed.rcvd else None

    def publish_until_closed(self) -> None:
        try:
            for n in range(10**6):
                self.socket.send(
                    json.dumps({"op": "publish", "id": n, "topic": TOPIC, "data": f"p{n}"})
                )
        except ConnectionClosed:
            pass
        self._reader.join(timeout(10))


@pytest.mark.parametrize("workers", [1, 2], ids=["memory", "redis-2-workers"])
def test_the_protocol_endpoint_handles_nothing_after_its_close(
    attacked: Start, request: pytest.FixtureRequest, workers: int
) -> None:
    """Closed with 4401 by a logout while publishing flat out: every message the others got was
    answered to the publisher first (handled before the close), in order, none after."""
    backend = request.getfixturevalue("redis_server").url if workers == 2 else None
    server = attacked(workers=workers, backend=backend, PUBLISH_RATE=0)
    create_superuser(server, "mallory")
    browser = Browser(server)
    browser.log_in("mallory")
    with connect(f"{server.ws_url}/ws/broadcast/{TOPIC}/", max_queue=None) as watcher:
        with browser.websocket("/ws/connect/") as socket:
            publisher = Publisher(socket)
            flood = threading.Thread(target=publisher.publish_until_closed)
            flood.start()
            assert publisher.answered.wait(timeout(10))  # publishing is under way
            browser.log_out()
            flood.join(timeout(30))
        assert publisher.close_code == 4401
        received = received_until_marker(server, watcher)
    answered = [f"p{n}" for n in publisher.replied]
    assert publisher.replied == list(range(len(publisher.replied)))
    assert received == answered
    assert "Traceback" not in server.log()
