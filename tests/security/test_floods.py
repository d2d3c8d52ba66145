"""Class 5, cheap floods: requests that cost the client nothing and the server something.

* Pings never read. Clients send a million protocol pings each (``{"op": "ping"}``), or a million
  WebSocket ping frames, and never read the answers: every pong counts toward the connection's
  outbox bound, so each client is closed as a slow consumer (4408, or its socket dropped after the
  closing-handshake timeout), and the server's memory stays within a bound of where it started,
  whatever the count: the server parses what it reads a few KiB at a time and stops reading a
  socket while that connection's frames wait to be handled.
* Subscribe/unsubscribe churn. Past ``SUBSCRIBE_BURST`` the requests get ``rate_limited``; a client
  that goes on regardless is closed with 4429; the topic's watchers are served throughout.
* The demo page. A client churning its subscription to ``broadcast`` makes every open demo page
  update its "online" count from the join/leave events, not send a presence request per event.

Memory is the server process's resident set, compared with a baseline taken in the same test.
"""

from __future__ import annotations

import asyncio
import contextlib
import json

import pytest
import websockets
from playwright.sync_api import WebSocket, expect
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from megaphone.core.closecodes import CloseCode
from tests.conftest import ServerProcess, timeout
from tests.e2e.browser import chromium
from tests.e2e.rawws import PING, TEXT, RawClient, frame, rss_kib
from tests.e2e.test_hardening import assert_served, metric_becomes, peak_rss, scrape, value

from .conftest import Start

MiB = 1024  # in KiB, the unit of rss_kib
PINGS = 1_000_000
#: Server RSS growth allowed during a flood. A flooded connection holds at most about one outbox
#: of pongs, a socket buffer (64 KiB), one read (256 KiB) and the events of one 4 KiB slice: well
#: under 1 MiB. Before the fix, WebSocket pings grew it by about 120 MiB per million, and protocol
#: pings by about 7 MiB (the events of a whole 256 KiB read: 14,000 of them).
RSS_MARGIN = 4 * MiB


def flood(client: RawClient, one: bytes, count: int) -> int:
    """Send the frame ``one`` ``count`` times, never reading; stop early if the server drops the
    connection (or stops reading it for good). Return how many were sent."""
    batch = 1000
    chunk = one * batch
    sent = 0
    client.sock.settimeout(timeout(30))
    with contextlib.suppress(OSError):  # reset, broken pipe, or a timeout: the server stopped
        while sent < count:
            client.sock.sendall(chunk)
            sent += batch
    return sent


def closed_as_slow(client: RawClient) -> None:
    """Read what the server sent; it must end with close 4408, or with the socket dropped (the
    client did not answer the close frame in time)."""
    _, code = client.read_until_close(timeout(30))
    assert code in (CloseCode.SLOW_CONSUMER, None)


async def flooded(server: ServerProcess, one: bytes, clients: int) -> int:
    """``clients`` raw clients of ``/ws/connect/`` each send ``PINGS`` copies of ``one`` at once and
    never read; return the server's peak RSS growth (KiB) until all of them were closed."""
    pid = server.process.pid
    await assert_served(server)  # the server has served a client before the baseline
    floods = []
    for _ in range(clients):
        client = RawClient(server.port, rcvbuf=4096)
        assert client.handshake("/ws/connect/") == 101
        assert json.loads(client.recv_frame().payload)["type"] == "connected"
        floods.append(client)
    baseline = rss_kib(pid)
    with peak_rss(pid) as peak:
        await asyncio.gather(*(asyncio.to_thread(flood, c, one, PINGS) for c in floods))
        await asyncio.gather(*(asyncio.to_thread(closed_as_slow, c) for c in floods))
    for client in floods:
        client.close()
    metrics = await scrape(server)
    assert value(metrics, "megaphone_closes_total", code="4408") == clients
    assert value(metrics, "megaphone_slow_consumer_disconnects_total") == clients
    await assert_served(server)
    return peak[0] - baseline


async def test_a_million_protocol_pings_never_read_close_4408_in_bounded_memory(
    attacked: Start,
) -> None:
    server = attacked(PING_INTERVAL=600)  # the slow-consumer bound closes it, not the keepalive
    growth = await flooded(server, frame(TEXT, b'{"op":"ping"}'), clients=1)
    print(f"protocol pings: peak RSS growth {growth} KiB")
    assert growth < RSS_MARGIN
    assert "closing a slow consumer on /ws/connect/: outbox full" in server.log()


async def test_a_million_websocket_pings_never_read_close_4408_in_bounded_memory(
    attacked: Start,
) -> None:
    server = attacked(PING_INTERVAL=600)
    growth = await flooded(server, frame(PING, b"p" * 125), clients=1)  # the largest ping
    print(f"WebSocket pings: peak RSS growth {growth} KiB")
    assert growth < RSS_MARGIN
    assert "pongs unread" in server.log()


async def test_a_dead_connection_with_unread_frames_is_released(attacked: Start) -> None:
    # It does not answer the server's pings (closed with 1011) and has not read 6 MB of
    # messages: uvicorn alone would wait forever for it to read them before letting it go.
    server = attacked(PING_INTERVAL=1, PING_TIMEOUT=1)
    url = f"{server.ws_url}/ws/broadcast/big/"
    dead = RawClient(server.port, rcvbuf=4096)
    assert dead.handshake("/ws/broadcast/big/") == 101
    async with websockets.connect(url, max_queue=None) as publisher:
        await metric_becomes(server, 2, "megaphone_connections")
        for i in range(100):  # more than the socket buffers hold, less than an outbox
            await publisher.send(f"{i} ".ljust(60_000, "x"))
            await asyncio.wait_for(publisher.recv(), timeout(5))
        await metric_becomes(server, 1, "megaphone_closes_total", seconds=10, code="1011")
        await metric_becomes(server, 1, "megaphone_connections", seconds=30)
        assert await asyncio.to_thread(dead.closed_by_server, timeout(5))
        await assert_served(server)
    dead.close()


async def next_message(client: websockets.ClientConnection) -> dict[str, object]:
    """The next ``message`` frame of ``client`` (replies, join and leave events skipped)."""
    while True:
        received = json.loads(await asyncio.wait_for(client.recv(), timeout(5)))
        if received["type"] == "message":
            return received  # type: ignore[no-any-return]


async def test_subscribe_churn_is_rate_limited_then_closed_4429_and_watchers_are_served(
    attacked: Start,
) -> None:
    server = attacked()  # the defaults: SUBSCRIBE_RATE 20, SUBSCRIBE_BURST 512
    topic = "broadcast"  # presence and join/leave events on (the example project's settings)
    url = f"{server.ws_url}/ws/connect/"
    async with (
        websockets.connect(url, max_queue=None) as churner,
        websockets.connect(url, max_queue=None) as watcher,
    ):
        for client in (churner, watcher):
            await client.recv()  # connected
        await watcher.send(json.dumps({"op": "subscribe", "id": 1, "topic": topic}))

        requests = 4000
        for i in range(0, requests, 2):
            await churner.send(json.dumps({"op": "subscribe", "id": i, "topic": topic}))
            await churner.send(json.dumps({"op": "unsubscribe", "id": i + 1, "topic": topic}))
        answers: dict[str, int] = {}
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                answer = json.loads(await asyncio.wait_for(churner.recv(), timeout(10)))
                kind = answer.get("code") or answer["type"]
                answers[kind] = answers.get(kind, 0) + 1
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4429
        assert answers["reply"] >= 512  # the burst went through
        assert answers["rate_limited"] >= 512  # then refusals, as many as their own burst
        assert answers["reply"] + answers["rate_limited"] < requests  # closed before the end

        await watcher.send(json.dumps({"op": "publish", "id": 2, "topic": topic, "data": "hi"}))
        assert (await next_message(watcher))["data"] == "hi"
    metrics = await scrape(server)
    assert value(metrics, "megaphone_closes_total", code="4429") == 1
    assert "subscribing and unsubscribing on through rate_limited errors" in server.log()


@pytest.mark.browser
def test_the_demo_page_follows_join_and_leave_without_a_presence_request_each(
    attacked: Start,
) -> None:
    server = attacked()
    with chromium() as browser:
        page = browser.new_page()
        presence_requests: list[str] = []

        def watch(socket: WebSocket) -> None:
            def sent(payload: str | bytes) -> None:
                if isinstance(payload, str) and json.loads(payload).get("op") == "presence":
                    presence_requests.append(payload)

            socket.on("framesent", sent)

        page.on("websocket", watch)
        page.goto(f"{server.http_url}/")
        count = page.locator("#presence")
        expect(count).to_have_attribute("data-count", "1", timeout=timeout(10_000))
        assert len(presence_requests) == 1  # asked once, when subscribed

        def request(client: ClientConnection, op: str, id: int) -> None:
            client.send(json.dumps({"op": op, "id": id, "topic": "broadcast"}))
            while json.loads(client.recv(timeout(5))).get("id") != id:
                pass  # join and leave events (its own included)

        with connect(f"{server.ws_url}/ws/connect/") as churner:
            churner.recv(timeout(5))  # connected
            for i in range(0, 100, 2):  # 100 join/leave events, within SUBSCRIBE_BURST
                request(churner, "subscribe", i)
                request(churner, "unsubscribe", i + 1)
            request(churner, "subscribe", 100)
            expect(count).to_have_attribute("data-count", "2", timeout=timeout(10_000))
        expect(count).to_have_attribute("data-count", "1", timeout=timeout(10_000))
        expect(count).to_have_text("1 online")
        # The join and leave events kept the count; at most one resync (after 30 s) asked again.
        assert len(presence_requests) <= 2
