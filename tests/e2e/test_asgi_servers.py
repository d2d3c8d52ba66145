"""Tier 3: "any ASGI server". The example project under ``manage.py serve``, plain uvicorn,
daphne, hypercorn and granian (each one that is installed), the same checks for each: the raw
broadcast, the JSON protocol, the documented close codes (1009, 4403, 4429, 4408, 4401 on logout)
and the Origin policy. Only ``serve`` has Megaphone's fast write path (``megaphone.write_frame``);
the others go through plain ASGI sends (docs/asgi-server.md)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from megaphone.conf import Config
from megaphone.testing import unique
from tests.conftest import (
    ASGI_SERVERS,
    ROOT,
    ServerProcess,
    create_superuser,
    start_asgi_server,
    timeout,
)

from .rawws import RawClient
from .sessions import Browser, close_code

#: What the servers run: a read-only topic pattern, and limits low enough to reach quickly.
PUBLISH_BURST = 100
SETTINGS = {
    "DASHBOARD_INTERVAL": 0,
    "PUBLISH_RATE": 0.1,
    "PUBLISH_BURST": PUBLISH_BURST,
    "OUTBOX_MAX_MESSAGES": 16,
    "TOPICS": {"feed.*": {"publish": False}},
}
MAX_MESSAGE_SIZE = Config().MAX_MESSAGE_SIZE


@pytest.fixture(scope="module", params=ASGI_SERVERS)
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """The example project under one ASGI server, shared by this module's tests."""
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.e2e.hardening_settings",
        "PYTHONPATH": str(ROOT),
        "MEGAPHONE_OVERRIDES": json.dumps(SETTINGS),
    }
    tmp_path: Path = tmp_path_factory.mktemp(request.param)
    started = start_asgi_server(tmp_path, request.param, env=env)
    yield started
    started.stop()


async def closed_with(client: websockets.ClientConnection) -> int | None:
    """Read until the server closes ``client``; the code of the server's close frame."""
    try:
        while True:
            await asyncio.wait_for(client.recv(), timeout(10))
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


async def test_raw_broadcast_reaches_every_client_of_the_topic(server: ServerProcess) -> None:
    url = f"{server.ws_url}/ws/broadcast/{unique('raw')}/"
    async with websockets.connect(url) as a, websockets.connect(url) as b:
        for sender, message in ((a, "hello from a"), (b, b"\x00\x01binary from b")):
            await sender.send(message)
            for client in (a, b):
                assert await asyncio.wait_for(client.recv(), timeout(5)) == message


async def test_protocol_subscribe_and_publish(server: ServerProcess) -> None:
    name = unique("proto")
    async with (
        websockets.connect(f"{server.ws_url}/ws/connect/") as subscriber,
        websockets.connect(f"{server.ws_url}/ws/connect/") as publisher,
    ):
        for client in (subscriber, publisher):
            assert json.loads(await client.recv())["type"] == "connected"
        await subscriber.send(json.dumps({"op": "subscribe", "id": 1, "topic": name}))
        reply = json.loads(await asyncio.wait_for(subscriber.recv(), timeout(5)))
        assert (reply["type"], reply["id"], reply["result"]["topic"]) == ("reply", 1, name)
        await publisher.send(json.dumps({"op": "publish", "id": 2, "topic": name, "data": "hi"}))
        published = json.loads(await asyncio.wait_for(publisher.recv(), timeout(5)))
        assert (published["type"], published["id"]) == ("reply", 2)
        message = json.loads(await asyncio.wait_for(subscriber.recv(), timeout(5)))
        assert (message["type"], message["topic"], message["data"]) == ("message", name, "hi")
        assert message["offset"] == published["result"]["offset"]


async def test_oversize_message_closes_1009(server: ServerProcess) -> None:
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/{unique('big')}/") as client:
        await client.send("x" * (MAX_MESSAGE_SIZE + 1))
        code = await closed_with(client)
    # daphne (autobahn) lets an application send no RFC 6455 code but 1000.
    assert code == (1000 if server.name == "daphne" else 1009)
    assert "Traceback" not in server.log()


async def test_raw_publish_on_a_read_only_topic_closes_4403(server: ServerProcess) -> None:
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/{unique('feed.x')}/") as client:
        await client.send("HACKED")
        assert await closed_with(client) == 4403


async def test_publishing_over_the_rate_closes_4429(server: ServerProcess) -> None:
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/{unique('rate')}/") as client:
        # The burst, and two more: at most one token is refilled in 10 s (PUBLISH_RATE).
        for i in range(PUBLISH_BURST + 2):
            await client.send(f"m{i}")
        assert await closed_with(client) == 4429


async def test_a_client_that_never_reads_is_closed_4408(
    server: ServerProcess, request: pytest.FixtureRequest
) -> None:
    if server.name == "daphne":
        reason = "daphne's websocket.send never waits: Twisted buffers every frame without bound"
        request.applymarker(pytest.mark.xfail(reason=reason, strict=True))
    name = unique("slow")
    with RawClient(server.port, rcvbuf=4096) as slow:  # closed however the test ends
        assert slow.handshake(f"/ws/broadcast/{name}/") == 101
        # Protocol publishers (not subscribed: nothing comes back to them), each within its
        # burst: 12 MiB in all, far more than the socket buffers and the slow client's outbox.
        payload = "y" * (MAX_MESSAGE_SIZE - 1024)
        for _ in range(2):
            async with websockets.connect(f"{server.ws_url}/ws/connect/") as publisher:
                await publisher.recv()
                for i in range(PUBLISH_BURST):
                    request = {"op": "publish", "id": i, "topic": name, "data": payload}
                    await publisher.send(json.dumps(request))
                for _ in range(PUBLISH_BURST):
                    answer = json.loads(await asyncio.wait_for(publisher.recv(), timeout(10)))
                    assert answer["type"] == "reply", answer
        _, code = await asyncio.to_thread(slow.read_until_close, timeout(20))
    assert code == 4408


async def test_logout_closes_the_users_socket_4401(server: ServerProcess) -> None:
    username = f"u{uuid.uuid4().hex[:8]}"
    create_superuser(server, username)
    browser = Browser(server)
    await asyncio.to_thread(browser.log_in, username)

    def open_then_log_out() -> int | None:
        with browser.websocket("/ws/broadcast/") as socket:
            browser.log_out()
            return close_code(socket)

    assert await asyncio.to_thread(open_then_log_out) == 4401


async def test_a_page_from_a_foreign_origin_is_refused(server: ServerProcess) -> None:
    url = f"{server.ws_url}/ws/broadcast/"
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url, origin="https://evil.example")  # type: ignore[arg-type]
    assert refused.value.response.status_code == 403
    async with websockets.connect(url, origin=server.http_url) as own:  # type: ignore[arg-type]
        await own.send("same site")
        assert await asyncio.wait_for(own.recv(), timeout(5)) == "same site"
