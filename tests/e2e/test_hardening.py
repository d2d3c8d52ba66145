"""Tier 3: the limits, proven against a real ``manage.py serve`` process (docs/operations.md).

Every test talks to 127.0.0.1 only and checks that the clients beside the misbehaving one are still
served. Misbehaving clients are raw sockets (``rawws``); well-behaved ones use ``websockets``.
Memory is the server process's resident set (``VmRSS``), compared with a baseline taken in the
same test; latency is compared with a baseline of the same run, never with a fixed figure.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from megaphone.conf import Config
from megaphone.testing import Signal, unique
from tests.conftest import ROOT, TRANSPORT, ServerProcess, timeout

from .rawws import CLOSE, CONTINUATION, PING, TEXT, RawClient, frame, peak_rss, rss_kib

Start = Callable[..., ServerProcess]
MiB = 1024


@pytest.fixture
def hardened(server_factory: Callable[..., ServerProcess]) -> Start:
    """``hardened(KEY=value, ...)`` starts a server with those ``MEGAPHONE`` settings (and no
    dashboard publisher, so the counters count only what the test does)."""

    def start(**overrides: Any) -> ServerProcess:
        settings = {"DASHBOARD_INTERVAL": 0, **overrides}
        env = {
            "DJANGO_SETTINGS_MODULE": "tests.e2e.hardening_settings",
            "PYTHONPATH": str(ROOT),
            "MEGAPHONE_OVERRIDES": json.dumps(settings),
        }
        return server_factory(env=env)

    return start


async def scrape(server: ServerProcess) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"{server.http_url}/metrics", timeout=timeout(5)) as response:
            return response.read().decode()  # type: ignore[no-any-return]

    return await asyncio.to_thread(get)


def value(metrics: str, name: str, **labels: str) -> float:
    """A sample of the exposition; a labelled counter never incremented is 0."""
    key = name + ("{" + ",".join(f'{k}="{v}"' for k, v in labels.items()) + "}" if labels else "")
    match = re.search(rf"^{re.escape(key)} (\S+)$", metrics, re.MULTILINE)
    if match is None:
        assert labels, f"{name} is not in /metrics"
        return 0.0
    return float(match.group(1))


async def eventually(check: Callable[[], Awaitable[bool]], seconds: float = 5) -> None:
    deadline = time.monotonic() + timeout(seconds)
    while not await check():
        assert time.monotonic() < deadline, "condition not met in time"
        await asyncio.sleep(0.05)


async def metric_becomes(
    server: ServerProcess, expected: float, name: str, seconds: float = 5, **labels: str
) -> None:
    async def check() -> bool:
        return value(await scrape(server), name, **labels) == expected

    await eventually(check, seconds)


async def assert_served(server: ServerProcess) -> None:
    """Two fresh clients of one topic: a message from one reaches both."""
    url = f"{server.ws_url}/ws/broadcast/{unique('alive')}/"
    async with websockets.connect(url) as a, websockets.connect(url) as b:
        await a.send("still served")
        for client in (a, b):
            assert await asyncio.wait_for(client.recv(), timeout(5)) == "still served"


# 1. Slow consumer ------------------------------------------------------------------------------

COUNT, SIZE = 5000, 4096


async def test_a_client_that_never_reads_is_closed_4408_and_costs_nothing_after(
    hardened: Start,
) -> None:
    # One publisher sends 10,000 messages. History holds the last 5,000: full before the
    # slow client subscribes, and enough for it to resume. What the slow client costs the
    # others (latency, server memory) is measured by bench/slow_consumer.py, not asserted here.
    server = hardened(PUBLISH_RATE=0, HISTORY_SIZE=COUNT, RECOVERY_MAX_MESSAGES=COUNT)
    topic = "flood"
    publisher = await websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/", max_queue=None)
    healthy = await websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/", max_queue=None)

    async def burst(tag: str) -> None:
        """Publish COUNT messages of SIZE bytes, as fast as the healthy client reads them (at
        most 256 ahead of it: it shares this process's CPU with the publisher, and must not
        become a slow consumer itself), checking it gets every one in order."""
        received = 0
        changed = Signal()

        async def receive() -> None:
            nonlocal received
            for i in range(COUNT):
                text = await asyncio.wait_for(healthy.recv(), timeout(30))
                assert str(text).split(" ", 2)[:2] == [tag, str(i)]
                received += 1
                changed.notify()

        receiving = asyncio.ensure_future(receive())
        for i in range(COUNT):
            ahead = i - 256
            if received < ahead:
                await changed.wait_until(
                    lambda ahead=ahead: received >= ahead or receiving.done(), 30
                )
            await publisher.send(f"{tag} {i} ".ljust(SIZE, "x"))
        await receiving

    await burst("calm")  # also fills the topic's history

    slow = RawClient(server.port, rcvbuf=4096)
    assert slow.handshake("/ws/connect/") == 101
    assert json.loads(slow.recv_frame().payload)["type"] == "connected"
    slow.send(frame(TEXT, json.dumps({"op": "subscribe", "id": 1, "topic": topic}).encode()))
    subscribed = json.loads(slow.recv_frame().payload)["result"]
    # From here on the slow client reads nothing.
    await burst("flood")
    await metric_becomes(server, 1, "megaphone_slow_consumer_disconnects_total")
    # Closed for good at once, though it never read its close frame: it left the topic.
    await metric_becomes(server, 2, "megaphone_subscriptions", seconds=2)

    frames, code = await asyncio.to_thread(slow.read_until_close, timeout(10))
    slow.close()
    assert code == 4408
    offsets = [json.loads(f.payload)["offset"] for f in frames]
    last = subscribed["offset"] + len(offsets)
    assert offsets == list(range(subscribed["offset"] + 1, last + 1))  # in order, then cut
    assert last < subscribed["offset"] + COUNT

    metrics = await scrape(server)
    assert value(metrics, "megaphone_closes_total", code="4408") == 1
    outbox = Config().OUTBOX_MAX_MESSAGES  # the default
    assert value(metrics, "megaphone_drops_total", reason="slow_consumer") == outbox + 1
    assert value(metrics, "megaphone_connections") == 2  # the publisher and the healthy client
    assert "closing a slow consumer on /ws/connect/: outbox full" in server.log()

    # Its offset tells the client what it missed; history still holds all of it, so it resumes
    # from there: every missed message once, in order (paced through its outbox), then live.
    resumed = await websockets.connect(f"{server.ws_url}/ws/connect/", max_queue=None)
    await resumed.recv()
    since = {"offset": last, "epoch": subscribed["epoch"]}
    await resumed.send(json.dumps({"op": "subscribe", "id": 1, "topic": topic, "since": since}))
    reply = json.loads(await asyncio.wait_for(resumed.recv(), timeout(5)))
    latest = subscribed["offset"] + COUNT
    assert reply["result"] == {
        "topic": topic,
        "offset": latest,
        "epoch": subscribed["epoch"],
        "recovered": True,
        "missed": latest - last,
    }
    await publisher.send("live")
    received = [json.loads(await asyncio.wait_for(resumed.recv(), timeout(10)))["offset"]]
    while received[-1] <= latest:
        received.append(json.loads(await asyncio.wait_for(resumed.recv(), timeout(10)))["offset"])
    assert received == list(range(last + 1, latest + 2))
    await resumed.close()

    await publisher.close()
    await healthy.close()


# 2. Publish flood ------------------------------------------------------------------------------


async def test_publishing_at_1000_per_second_is_throttled_then_closed_and_others_unaffected(
    hardened: Start,
) -> None:
    server = hardened(PUBLISH_RATE=20, PUBLISH_BURST=20)
    topic = "rate"
    calm = await websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/", max_queue=None)

    # Protocol endpoint: each publish over the rate gets an error frame; the connection stays.
    proto = await websockets.connect(f"{server.ws_url}/ws/connect/", max_queue=None)
    await proto.recv()
    started = time.monotonic()
    for i in range(1000):
        body = {"op": "publish", "id": i, "topic": topic, "data": f"p{i} secret-body-7f3a"}
        await proto.send(json.dumps(body))
        await asyncio.sleep(0.001)
    elapsed = time.monotonic() - started
    answers = [json.loads(await asyncio.wait_for(proto.recv(), timeout(5))) for _ in range(1000)]
    accepted = [a["id"] for a in answers if a["type"] == "reply"]
    refused = [a for a in answers if a["type"] == "error"]
    assert {a["code"] for a in refused} == {"rate_limited"}
    assert len(accepted) + len(refused) == 1000
    assert 20 <= len(accepted) <= 20 + 20 * elapsed + 5
    await proto.send(json.dumps({"op": "ping", "id": "still-open"}))
    assert json.loads(await asyncio.wait_for(proto.recv(), timeout(5))) == {
        "type": "pong",
        "id": "still-open",
    }
    for i in accepted:
        assert await asyncio.wait_for(calm.recv(), timeout(5)) == f"p{i} secret-body-7f3a"

    # Raw endpoint: there is no error frame, so publishing over the rate closes with 4429.
    raw = await websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/", max_queue=None)
    try:
        for i in range(1000):
            await raw.send(f"r{i} secret-body-7f3a")
            await asyncio.sleep(0.001)
    except ConnectionClosed:
        pass  # the close arrived while this client was still sending
    await asyncio.wait_for(raw.wait_closed(), timeout(5))
    assert raw.close_code == 4429
    received = []
    with pytest.raises(TimeoutError):
        while True:
            received.append(await asyncio.wait_for(calm.recv(), 0.5))
    assert len(received) >= 20  # the burst went through before the close, in order:
    assert received == [f"r{i} secret-body-7f3a" for i in range(len(received))]

    metrics = await scrape(server)
    assert value(metrics, "megaphone_closes_total", code="4429") == 1
    log = server.log()
    assert "publish rate over the limit" in log
    assert "secret-body" not in log  # limit hits are logged, message bodies never
    await assert_served(server)
    await calm.close()
    await proto.close()


# 3 and 4. Fragments and oversize messages -----------------------------------------------------


def send_fragments(client: RawClient, payload: bytes, count: int) -> int:
    """A text frame with FIN=0, then ``count`` continuation frames with FIN=0; stops when the
    server closes. Returns how many were sent."""
    chunk = b"".join(frame(CONTINUATION, payload, fin=False) for _ in range(1000))
    client.send(frame(TEXT, payload, fin=False))
    sent = 0
    try:
        while sent < count:
            client.send(chunk)
            sent += 1000
    except OSError:  # the server closed the connection
        pass
    return sent


async def test_endless_fragments_close_1009_at_the_size_limit_and_memory_stays_bounded(
    hardened: Start,
) -> None:
    server = hardened()
    pid = server.process.pid
    await assert_served(server)
    rss_before = rss_kib(pid)

    # 100,000 fragments of 3 bytes: the message passes MAX_MESSAGE_SIZE (64 KiB) after ~22,000.
    with RawClient(server.port) as client, peak_rss(pid) as peak:
        assert client.handshake("/ws/broadcast/fragments/") == 101
        await asyncio.to_thread(send_fragments, client, b"abc", 100_000)
        frames, code = await asyncio.to_thread(client.read_until_close, timeout(10))
    assert (frames, code) == ([], 1009)

    # Empty fragments add nothing to the message's size, so they never reach the limit: a
    # million of them must not cost memory either (uvicorn alone kept each one in a list).
    with RawClient(server.port) as client, peak_rss(pid) as empty_peak:
        assert client.handshake("/ws/broadcast/fragments/") == 101
        sent = await asyncio.to_thread(send_fragments, client, b"", 1_500_000)
        assert sent == 1_500_000
        await assert_served(server)  # while the endless message is still open
        client.send(frame(CONTINUATION, b"done"))
        assert (await asyncio.to_thread(client.recv_frame, timeout(5))).payload == b"done"
    rss_after = rss_kib(pid)
    print(
        f"fragments: RSS before {rss_before // MiB} MiB, peak {peak[0] // MiB} MiB (3-byte), "
        f"{empty_peak[0] // MiB} MiB (empty), after {rss_after // MiB} MiB"
    )
    assert peak[0] < rss_before + 8 * MiB
    assert empty_peak[0] < rss_before + 10 * MiB
    await assert_served(server)


async def test_a_10_mib_message_closes_1009_at_once_and_reaches_no_one(hardened: Start) -> None:
    server = hardened()
    pid = server.process.pid
    topic = "big"
    other = await websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/")
    rss_before = rss_kib(pid)
    ten_mib = 10 * 1024 * 1024

    with RawClient(server.port) as whole, peak_rss(pid) as peak:
        assert whole.handshake(f"/ws/broadcast/{topic}/") == 101
        head = frame(TEXT, b"x" * 256 * 1024)  # the first 256 KiB of the 10 MiB frame:
        whole.send(head[:1] + bytes([0x80 | 127]) + ten_mib.to_bytes(8, "big") + head[10:])
        started = time.monotonic()
        frames, code = await asyncio.to_thread(whole.read_until_close, timeout(5))
        assert (frames, code) == ([], 1009)
        closed_after = time.monotonic() - started

    with RawClient(server.port) as pieces, peak_rss(pid) as fragmented_peak:
        assert pieces.handshake(f"/ws/broadcast/{topic}/") == 101
        piece = b"y" * (60 * 1024)
        pieces.send(frame(TEXT, piece, fin=False))
        try:
            for _ in range(ten_mib // len(piece)):
                pieces.send(frame(CONTINUATION, piece, fin=False))
        except OSError:
            pass
        frames, code = await asyncio.to_thread(pieces.read_until_close, timeout(5))
        assert (frames, code) == ([], 1009)

    with pytest.raises(TimeoutError):
        await asyncio.wait_for(other.recv(), 0.5)  # nothing of either message was delivered
    rss_after = rss_kib(pid)
    print(
        f"10 MiB: closed 1009 {closed_after * 1000:.0f} ms after sending; RSS before "
        f"{rss_before // MiB} MiB, peak {max(peak[0], fragmented_peak[0]) // MiB} MiB, after "
        f"{rss_after // MiB} MiB"
    )
    assert max(peak[0], fragmented_peak[0]) < rss_before + 4 * MiB
    assert value(await scrape(server), "megaphone_closes_total", code="1009") == 2
    await assert_served(server)
    await other.close()


# 5. UTF-8 --------------------------------------------------------------------------------------


async def test_utf8_split_across_fragments_is_fine_and_invalid_utf8_closes_1007(
    hardened: Start,
) -> None:
    server = hardened()
    other = await websockets.connect(f"{server.ws_url}/ws/broadcast/utf8/")
    with RawClient(server.port) as client:
        assert client.handshake("/ws/broadcast/utf8/") == 101
        client.send(frame(TEXT, b"caf\xc3", fin=False) + frame(CONTINUATION, b"\xa9"))
        echo = await asyncio.to_thread(client.recv_frame, timeout(5))
        assert echo.payload == "café".encode()
        assert await asyncio.wait_for(other.recv(), timeout(5)) == "café"
        client.send(frame(TEXT, b"ok \xff\xfe"))
        frames, code = await asyncio.to_thread(client.read_until_close, timeout(5))
    assert (frames, code) == ([], 1007)
    assert value(await scrape(server), "megaphone_closes_total", code="1007") == 1
    log = server.log()
    assert "with 1007" in log and "Traceback" not in log  # one line, no flood
    # Per connection: uvicorn's [accepted] line (not on the native transport, which logs none)
    # and ours with the code; no "connection open".
    accepted = '"WebSocket /ws/broadcast/utf8/" [accepted]' in log
    assert accepted == (TRANSPORT == "asgi") and "code 1007" in log
    assert "connection open" not in log and "connection closed" not in log
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(other.recv(), 0.3)
    await assert_served(server)
    await other.close()


# 6. Connection floods --------------------------------------------------------------------------


async def test_the_51st_connection_from_one_address_gets_403_and_the_50_are_served(
    hardened: Start,
) -> None:
    server = hardened(MAX_CONNECTIONS_PER_IP=50)
    url = f"{server.ws_url}/ws/broadcast/crowd/"
    clients = [await websockets.connect(url) for _ in range(50)]
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url)
    assert refused.value.response.status_code == 403
    await clients[0].send("the 50 are fine")
    for client in clients:
        assert await asyncio.wait_for(client.recv(), timeout(5)) == "the 50 are fine"
    assert value(await scrape(server), "megaphone_refusals_total", reason="connections_per_ip") == 1
    assert "127.0.0.1 already has 50 connections" in server.log()

    await clients.pop().close()  # a closed connection frees its place

    async def accepted() -> bool:
        try:
            clients.append(await websockets.connect(url))
        except InvalidStatus:
            return False
        return True

    await eventually(accepted)
    await asyncio.gather(*(client.close() for client in clients))


async def test_2000_connection_attempts_without_a_limit_leave_the_server_serving(
    hardened: Start,
) -> None:
    server = hardened()
    url = f"{server.ws_url}/ws/broadcast/flood-conn/"
    gate = asyncio.Semaphore(100)

    async def connect() -> websockets.ClientConnection:
        async with gate:
            return await websockets.connect(url, open_timeout=timeout(30))

    async def connect_and_vanish() -> None:  # no close handshake: the socket just dies
        (await connect()).transport.abort()

    held = await asyncio.gather(*(connect() for _ in range(1000)))
    await asyncio.gather(*(connect_and_vanish() for _ in range(1000)))
    await metric_becomes(server, 1000, "megaphone_connections")
    await held[0].send("a thousand at once")
    for client in held[-10:]:
        assert await asyncio.wait_for(client.recv(), timeout(5)) == "a thousand at once"
    await assert_served(server)
    await asyncio.gather(*(client.close() for client in held))
    await metric_becomes(server, 0, "megaphone_connections")
    assert value(await scrape(server), "megaphone_connections_accepted_total") == 2000 + 2


# 7. Handshake timeout, dead connections --------------------------------------------------------


async def test_silent_sockets_and_half_handshakes_are_dropped_after_handshake_timeout(
    hardened: Start,
) -> None:
    server = hardened(HANDSHAKE_TIMEOUT=1)
    started = time.monotonic()
    silent = RawClient(server.port)
    half = RawClient(server.port)
    half.send(half.request("/ws/broadcast/")[:40])
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/patient/") as connected:
        assert await asyncio.to_thread(silent.closed_by_server, timeout(5))
        assert await asyncio.to_thread(half.closed_by_server, timeout(5))
        assert time.monotonic() - started >= 1
        await connected.send("a finished handshake has no deadline")
        assert await asyncio.wait_for(connected.recv(), timeout(5)) == (
            "a finished handshake has no deadline"
        )
    silent.close()
    half.close()
    with RawClient(server.port) as tokened:  # a bad token: refused, and never logged
        assert tokened.handshake("/ws/broadcast/?token=not-a-real-token-5c1e") == 403
    await assert_served(server)
    assert value(await scrape(server), "megaphone_refusals_total", reason="handshake_timeout") == 2
    log = server.log()
    assert "no complete request head in time" in log
    # One line for the refusal, Megaphone's, with the reason and without the token.
    assert "not-a-real-token-5c1e" not in log and "token refused: bad signature" in log


async def test_a_client_that_does_not_answer_pings_is_closed(hardened: Start) -> None:
    server = hardened(PING_INTERVAL=0.5, PING_TIMEOUT=0.5)
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/pings/") as answering:
        with RawClient(server.port) as mute:
            assert mute.handshake("/ws/broadcast/pings/") == 101
            await metric_becomes(server, 2, "megaphone_connections")
            # Blocking reads in a thread: the event loop must answer `answering`'s pings.
            ping = await asyncio.to_thread(mute.recv_frame, timeout(5))
            assert ping.opcode == PING  # ... and no pong goes back
            closing = await asyncio.to_thread(mute.recv_frame, timeout(5))
            assert (closing.opcode, closing.close_code) == (CLOSE, 1011)
            assert await asyncio.to_thread(mute.closed_by_server, timeout(5))
        await metric_becomes(server, 1, "megaphone_connections")
        assert value(await scrape(server), "megaphone_closes_total", code="1011") == 1
        assert "no pong in time (dead connection)" in server.log()
        await asyncio.sleep(1.5)  # three ping periods: the client answering pings stays
        await answering.send("still here")
        assert await asyncio.wait_for(answering.recv(), timeout(5)) == "still here"


# 8. Metrics ------------------------------------------------------------------------------------


async def test_metrics_count_what_the_clients_did(hardened: Start) -> None:
    server = hardened()
    url = f"{server.ws_url}/ws/broadcast/counted/"
    clients = [await websockets.connect(url, max_queue=None) for _ in range(7)]
    for i in range(30):
        await clients[0].send(f"m{i}")
    for client in clients:
        assert [await asyncio.wait_for(client.recv(), timeout(5)) for _ in range(30)] == [
            f"m{i}" for i in range(30)
        ]
    metrics = await scrape(server)
    assert value(metrics, "megaphone_connections") == 7
    assert value(metrics, "megaphone_connections_accepted_total") == 7
    assert value(metrics, "megaphone_messages_published_total") == 30
    assert value(metrics, "megaphone_deliveries_total") == 30 * 7
    assert value(metrics, "megaphone_publish_to_send_seconds_count") == 30
    assert value(metrics, "megaphone_topics") == 1
    assert value(metrics, "megaphone_subscriptions") == 7
    await asyncio.gather(*(client.close() for client in clients[:3]))
    await metric_becomes(server, 4, "megaphone_connections")
    metrics = await scrape(server)
    assert value(metrics, "megaphone_subscriptions") == 4
    assert value(metrics, "megaphone_slow_consumer_disconnects_total") == 0
    await asyncio.gather(*(client.close() for client in clients[3:]))
