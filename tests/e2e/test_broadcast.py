"""Tier 3: the seed's promise against a real `manage.py serve` process and real clients."""

from __future__ import annotations

import asyncio

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import ServerProcess, timeout, wait_for_log


async def recv(client: websockets.ClientConnection) -> str | bytes:
    return await asyncio.wait_for(client.recv(), timeout(5))


async def test_every_client_gets_the_message_and_other_topics_get_nothing(
    server: ServerProcess,
) -> None:
    url = f"{server.ws_url}/ws/broadcast/"
    async with (
        websockets.connect(url) as a,
        websockets.connect(url) as b,
        websockets.connect(url) as c,
        websockets.connect(f"{server.ws_url}/ws/broadcast/other/") as other,
        websockets.connect(url) as sender,
    ):
        await sender.send("hello, everyone")
        for client in (a, b, c, sender):
            assert await recv(client) == "hello, everyone"
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(other.recv(), 0.3)


async def test_binary_empty_and_64_kib_messages_round_trip(server: ServerProcess) -> None:
    url = f"{server.ws_url}/ws/broadcast/sizes/"
    payloads: list[str | bytes] = [b"\x00\x01\xfe\xff", "", b"", "x" * 65536, b"y" * 65536]
    async with websockets.connect(url) as sender, websockets.connect(url) as receiver:
        for payload in payloads:
            await sender.send(payload)
        for client in (receiver, sender):
            for payload in payloads:
                received = await recv(client)
                assert type(received) is type(payload) and received == payload


async def test_oversize_message_closes_sender_with_1009_and_others_keep_working(
    server: ServerProcess,
) -> None:
    url = f"{server.ws_url}/ws/broadcast/big/"
    async with websockets.connect(url, max_size=None) as sender, websockets.connect(url) as other:
        await sender.send("x" * 65537)
        with pytest.raises(ConnectionClosed) as closed:
            await recv(sender)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
        async with websockets.connect(url) as second:
            await second.send("still alive")
            assert await recv(other) == "still alive"
            assert await recv(second) == "still alive"


async def test_origin_policy(server: ServerProcess) -> None:
    url = f"{server.ws_url}/ws/broadcast/"
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url, origin="https://evil.example")
    assert refused.value.response.status_code == 403
    async with websockets.connect(url, origin=server.http_url) as own:  # same site: accepted
        await own.send("from the page")
        assert await recv(own) == "from the page"
    async with websockets.connect(url) as no_origin:  # wscat, scripts: accepted
        await no_origin.send("from a script")
        assert await recv(no_origin) == "from a script"
    assert "Origin 'https://evil.example' is not allowed" in server.log()


async def test_invalid_topic_is_refused_with_a_reason_in_the_log(server: ServerProcess) -> None:
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(f"{server.ws_url}/ws/broadcast/no%20spaces/")
    assert refused.value.response.status_code == 403
    await asyncio.to_thread(wait_for_log, server, "topic 'no spaces' has a character outside")


async def test_200_clients_receive_every_message_in_order(server: ServerProcess) -> None:
    url = f"{server.ws_url}/ws/broadcast/crowd/"
    clients = []
    for _ in range(10):  # connect in batches: the server's accept queue is not the test
        clients += await asyncio.gather(*(websockets.connect(url) for _ in range(20)))
    count = 100
    try:
        for i in range(count):
            await clients[0].send(f"m{i}")

        async def drain(client: websockets.ClientConnection) -> list[str | bytes]:
            return [await recv(client) for _ in range(count)]

        received = await asyncio.gather(*(drain(client) for client in clients))
        expected = [f"m{i}" for i in range(count)]
        assert all(messages == expected for messages in received)
    finally:
        await asyncio.gather(*(client.close() for client in clients))
