"""megaphone.client's own logic: the backoff, the message frames, and what it does after each
close code, against a scripted WebSocket server in this process (the test plays the server, as
tests/js/ does for megaphone.js). The client against real servers: tests/e2e/test_python_client.py.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve

from megaphone.client import Client, ClientError, Message, backoff_delay
from megaphone.testing import Signal
from tests.conftest import free_port, timeout

Script = Callable[[ServerConnection, int], Awaitable[None]]


@asynccontextmanager
async def scripted_server(script: Script) -> AsyncIterator[str]:
    """A server running ``script(connection, number)`` for its 1st, 2nd... connection."""
    count = 0

    async def handler(connection: ServerConnection) -> None:
        nonlocal count
        count += 1
        await connection.send(json.dumps({"type": "connected", "client": f"c{count}"}))
        await script(connection, count)

    async with serve(handler, "127.0.0.1", 0) as server:
        port = next(iter(server.sockets)).getsockname()[1]
        yield f"ws://127.0.0.1:{port}/ws/connect/"


async def receive(connection: ServerConnection) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(connection.recv(), timeout(5)))  # type: ignore[no-any-return]


def reply(request: dict[str, Any], result: dict[str, Any]) -> str:
    return json.dumps({"type": "reply", "id": request["id"], "result": result})


def test_the_backoff_doubles_up_to_max_delay_with_jitter() -> None:
    assert [backoff_delay(n, 0.5, 10, jitter=lambda: 1.0) for n in range(7)] == [
        0.5,
        1,
        2,
        4,
        8,
        10,
        10,
    ]
    assert backoff_delay(0, 0.5, 10, jitter=lambda: 0.0) == 0.25  # times 0.5 to 1
    assert backoff_delay(0, 0.5, 10, longest=True, jitter=lambda: 1.0) == 10
    assert backoff_delay(10_000, 0.5, 10, jitter=lambda: 1.0) == 10  # no overflow


def test_message_frames_round_trip_binary_as_bytes() -> None:
    frame = {
        "type": "message",
        "topic": "t",
        "offset": 3,
        "epoch": "e",
        "data": "AAE=",
        "binary": True,
    }
    message = Message.from_frame(frame)
    assert (message.data, message.binary) == (b"\x00\x01", True)
    assert message.to_frame() == frame
    text = Message.from_frame({**frame, "data": {"a": 1}, "binary": None})
    assert text.to_frame() == {
        "type": "message",
        "topic": "t",
        "offset": 3,
        "epoch": "e",
        "data": {"a": 1},
    }


async def test_1009_fails_the_largest_unanswered_publish_and_sends_the_others_again() -> None:
    async def script(connection: ServerConnection, number: int) -> None:
        if number == 1:
            frames = [await receive(connection), await receive(connection)]
            assert {f["data"] for f in frames} == {"small", "x" * 1000}
            await connection.close(1009)
            return
        again = await receive(connection)  # only the small one comes back, with its msg_id
        assert (again["data"], again["msg_id"]) == ("small", "s-1")
        await connection.send(reply(again, {"topic": "t", "offset": 1, "epoch": "e"}))
        await connection.wait_closed()

    async with scripted_server(script) as url, Client(url, min_delay=0.01) as client:
        small = asyncio.create_task(client.publish("t", "small", msg_id="s-1"))
        big = asyncio.create_task(client.publish("t", "x" * 1000))
        assert (await asyncio.wait_for(small, timeout(10))).offset == 1
        with pytest.raises(ClientError) as refused:
            await big
        assert refused.value.code == 1009


async def test_4401_with_a_fixed_url_stops_the_client_and_ends_its_iterators() -> None:
    async def script(connection: ServerConnection, number: int) -> None:
        request = await receive(connection)
        await connection.send(reply(request, {"topic": "t", "offset": 0, "epoch": "e"}))
        await connection.close(4401)

    async with scripted_server(script) as url, Client(url, min_delay=0.01) as client:
        subscription = await client.subscribe("t")
        with pytest.raises(ClientError) as stopped:
            await asyncio.wait_for(anext(subscription), timeout(10))
        assert stopped.value.code == 4401
        assert (client.state, client.close_code, client.next_retry_delay) == ("closed", 4401, None)
        with pytest.raises(ClientError, match="not connected"):
            await client.history("t")


async def test_4401_with_a_url_function_reconnects_with_the_url_it_gives() -> None:
    async def script(connection: ServerConnection, number: int) -> None:
        if number == 1:
            await connection.close(4401)
            return
        assert connection.request is not None and connection.request.path.endswith("token=2")
        request = await receive(connection)
        await connection.send(json.dumps({"type": "pong", "id": request["id"]}))
        await connection.wait_closed()

    async with scripted_server(script) as base:
        tokens = iter(range(1, 10))

        async def url() -> str:
            return f"{base}?token={next(tokens)}"

        changed = Signal()
        on_state = lambda state, code: changed.notify()  # noqa: E731
        async with Client(url, min_delay=0.01, on_state=on_state) as client:
            await changed.wait_until(
                lambda: client.close_code is not None and client.state == "open", timeout=10
            )
            await client.ping()


async def retry_delays(stable_period: float, count: int = 5) -> list[float]:
    """The first ``count`` reconnection delays against a server that accepts, then drops (1011),
    every connection."""

    async def script(connection: ServerConnection, number: int) -> None:
        await connection.close(1011)

    delays: list[float] = []
    enough = asyncio.Event()
    async with scripted_server(script) as url:

        def on_state(state: str, code: int | None) -> None:
            if state == "closed" and client.next_retry_delay is not None:
                delays.append(client.next_retry_delay)
                if len(delays) == count:
                    enough.set()

        client = Client(url, min_delay=0.01, max_delay=0.08, stable_period=stable_period)
        client.on_state = on_state
        await client.connect()
        await asyncio.wait_for(enough.wait(), timeout(10))
        await client.close()
    return delays[:count]


def between_half_and(bases: list[float], delays: list[float]) -> bool:
    return all(base / 2 <= delay <= base for delay, base in zip(delays, bases, strict=True))


async def test_the_backoff_starts_again_only_after_a_stable_connection() -> None:
    """Each connection opens (``connected``) and drops at once: with a long stable period, the
    delay keeps doubling up to max_delay; with none, every open connection resets it."""
    unstable = await retry_delays(stable_period=3600)
    assert between_half_and([0.01, 0.02, 0.04, 0.08, 0.08], unstable), unstable
    stable = await retry_delays(stable_period=0)
    assert between_half_and([0.01] * 5, stable), stable


async def test_4429_fails_the_unanswered_publishes_and_waits_the_longest_delay() -> None:
    async def script(connection: ServerConnection, number: int) -> None:
        if number == 1:
            await receive(connection)
            await connection.close(4429)
            return
        await connection.wait_closed()

    async with scripted_server(script) as url, Client(url, min_delay=0.01, max_delay=0.2) as client:
        with pytest.raises(ClientError) as refused:
            await client.publish("t", "flood")
        assert refused.value.code == 4429
        assert client.next_retry_delay is not None and client.next_retry_delay >= 0.1


async def test_a_refusal_with_nothing_to_blame_stops_the_client() -> None:
    async def script(connection: ServerConnection, number: int) -> None:
        await connection.close(1008)

    async with scripted_server(script) as url:
        client = Client(url, min_delay=0.01)
        stopped = asyncio.Event()
        client.on_state = lambda state, code: stopped.set() if code == 1008 else None
        await client.connect()
        await asyncio.wait_for(stopped.wait(), timeout(10))
        assert (client.state, client.next_retry_delay) == ("closed", None)
        with pytest.raises(ClientError, match="closed"):
            await client.subscribe("t")


async def test_unsubscribed_by_the_server_resubscribes_from_the_last_message_delivered() -> None:
    resubscribed: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

    async def script(connection: ServerConnection, number: int) -> None:
        request = await receive(connection)
        await connection.send(reply(request, {"topic": "t", "offset": 0, "epoch": "e"}))
        message = {"type": "message", "topic": "t", "offset": 1, "epoch": "e", "data": "one"}
        await connection.send(json.dumps(message))
        gap = {"type": "unsubscribed", "topic": "t", "code": "insufficient_state"}
        await connection.send(json.dumps({**gap, "offset": 1, "epoch": "e"}))
        again = await receive(connection)
        resubscribed.set_result(again)
        result = {"topic": "t", "offset": 2, "epoch": "e", "recovered": True, "missed": 1}
        await connection.send(reply(again, result))
        await connection.send(json.dumps({**message, "offset": 2, "data": "two"}))
        await connection.wait_closed()

    async with scripted_server(script) as url, Client(url) as client:
        subscription = await client.subscribe("t")
        items = [await asyncio.wait_for(anext(subscription), timeout(10)) for _ in range(2)]
        assert [m.data for m in items if isinstance(m, Message)] == ["one", "two"]
        again = await resubscribed
        assert (again["op"], again["since"]) == ("subscribe", {"offset": 1, "epoch": "e"})


def unreachable_url() -> str:
    """A ws:// URL where nothing listens (the port was free a moment ago)."""
    return f"ws://127.0.0.1:{free_port()}/ws/connect/"


async def test_a_list_of_urls_connects_to_the_next_one_when_the_first_is_unreachable() -> None:
    async def script(connection: ServerConnection, number: int) -> None:
        await connection.wait_closed()

    async with scripted_server(script) as url:
        dead = unreachable_url()
        async with Client([dead, url], min_delay=0.01) as client:
            assert (client.state, client.server_url) == ("open", url)


async def test_the_first_connect_fails_only_once_every_url_failed() -> None:
    first, second = unreachable_url(), unreachable_url()
    client = Client([first, second], min_delay=0.01)
    with pytest.raises(ClientError, match="could not connect"):
        await asyncio.wait_for(client.connect(), timeout(10))
    assert (client.state, client.server_url) == ("closed", second)


async def test_a_lost_connection_reconnects_to_the_next_url_and_resubscribes_since() -> None:
    """Server one sends a message and drops the connection (1011); the client goes on with
    server two, subscribing from where it stopped; when two drops it, back to one."""
    subscribes: list[tuple[str, dict[str, Any]]] = []

    def scripted(name: str) -> Script:
        async def script(connection: ServerConnection, number: int) -> None:
            request = await receive(connection)
            subscribes.append((name, request))
            await connection.send(reply(request, {"topic": "t", "offset": 1, "epoch": "e"}))
            frame = {"type": "message", "topic": "t", "epoch": "e", "data": name}
            await connection.send(json.dumps({**frame, "offset": len(subscribes) + 1}))
            await connection.close(1011)

        return script

    async with (
        scripted_server(scripted("one")) as one,
        scripted_server(scripted("two")) as two,
        Client([one, two], min_delay=0.01, max_delay=0.01) as client,
    ):
        subscription = await client.subscribe("t")
        received = [await asyncio.wait_for(anext(subscription), timeout(10)) for _ in range(3)]
    assert [(m.offset, m.data) for m in received if isinstance(m, Message)] == [
        (2, "one"),
        (3, "two"),
        (4, "one"),
    ]
    assert [(name, r.get("since")) for name, r in subscribes[:3]] == [
        ("one", None),
        ("two", {"offset": 2, "epoch": "e"}),
        ("one", {"offset": 3, "epoch": "e"}),
    ]


def test_an_empty_list_of_urls_is_refused() -> None:
    with pytest.raises(ValueError, match="list of URLs is empty"):
        Client([])
