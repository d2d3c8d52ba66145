"""Tier 3: the JSON protocol against a real `manage.py serve` process and real clients."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from megaphone.testing import unique
from tests.conftest import ServerProcess, timeout
from tests.protocol_clients import AsyncClient

from .conftest import PROTOCOL_SETTINGS_ENV


async def test_reconnect_with_last_offset_recovers_exactly_the_50_missed_then_live(
    server: ServerProcess,
) -> None:
    topic = unique("news")
    publisher = await AsyncClient.open(server)
    reader = await AsyncClient.open(server)
    await reader.result(op="subscribe", topic=topic)
    for i in range(3):
        await publisher.result(op="publish", topic=topic, data=f"before {i}")
    seen = [await reader.recv() for _ in range(3)]
    last = {"offset": seen[-1]["offset"], "epoch": seen[-1]["epoch"]}
    await reader.close()  # the connection is lost

    for i in range(50):
        await publisher.result(op="publish", topic=topic, data={"n": i})

    reader = await AsyncClient.open(server)
    result = await reader.result(op="subscribe", topic=topic, since=last)
    assert result["recovered"] is True and result["missed"] == 50
    assert result["offset"] == 53 and result["epoch"] == last["epoch"]
    missed = [await reader.recv() for _ in range(50)]
    assert [m["offset"] for m in missed] == list(range(4, 54))
    assert [m["data"] for m in missed] == [{"n": i} for i in range(50)]
    await publisher.result(op="publish", topic=topic, data="live")
    live = await reader.recv()
    assert (live["offset"], live["data"]) == (54, "live")
    with pytest.raises(TimeoutError):
        await reader.recv(seconds=0.3)
    await reader.close()
    await publisher.close()


async def test_a_gap_larger_than_history_says_recovered_false(
    protocol_server: ServerProcess,
) -> None:
    topic = unique("small.t")  # history_size 20 in protocol_settings.py
    client = await AsyncClient.open(protocol_server)
    start = await client.result(op="subscribe", topic=topic)
    await client.result(op="unsubscribe", topic=topic)
    for i in range(30):
        await client.result(op="publish", topic=topic, data=i)
    since = {"offset": 0, "epoch": start["epoch"]}
    result = await client.result(op="subscribe", topic=topic, since=since)
    assert result == {
        "topic": topic,
        "offset": 30,
        "epoch": start["epoch"],
        "recovered": False,
        "missed": 0,
    }
    with pytest.raises(TimeoutError):
        await client.recv(seconds=0.3)
    await client.close()


async def test_wscat_and_protocol_clients_see_each_others_messages(server: ServerProcess) -> None:
    client = await AsyncClient.open(server)
    await client.result(op="subscribe", topic="news")
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/news/") as wscat:
        await wscat.send("from wscat")
        message = await client.recv()
        assert message["type"] == "message" and message["data"] == "from wscat"
        assert await asyncio.wait_for(wscat.recv(), timeout(5)) == "from wscat"
        await client.send(op="publish", topic="news", data={"from": "protocol"})
        assert await asyncio.wait_for(wscat.recv(), timeout(5)) == '{"from":"protocol"}'
    await client.close()


async def test_ordering_under_load_100_subscribers_1000_messages(server: ServerProcess) -> None:
    topic = unique("load")
    subscribers = [await AsyncClient.open(server) for _ in range(100)]
    for subscriber in subscribers:
        await subscriber.result(op="subscribe", topic=topic)

    async def collect(subscriber: AsyncClient) -> list[int]:
        offsets: list[int] = []
        while len(offsets) < 1000:
            frame = await subscriber.recv(seconds=30)
            assert frame["type"] == "message", frame
            offsets.append(frame["offset"])
        return offsets

    collectors = [asyncio.ensure_future(collect(s)) for s in subscribers]
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/") as publisher:
        for i in range(1000):
            await publisher.send(f"m{i}")
        results = await asyncio.wait_for(asyncio.gather(*collectors), timeout(60))
    for offsets in results:
        assert offsets == list(range(1, 1001))  # strictly increasing, no gap, no duplicate
    for subscriber in subscribers:
        with pytest.raises(TimeoutError):
            await subscriber.recv(seconds=0.05)
        await subscriber.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{oops", "bad_request"),
        ('{"op":"teleport","id":1}', "unknown_op"),
        ('{"op":"publish","id":1,"topic":"t","data":1,"msg_id":{}}', "bad_request"),
        ('{"op":"subscribe","id":1,"topic":"t","since":{"offset":"1","epoch":"e"}}', "bad_request"),
        ('{"op":"ping","id":' + "7" * 1000 + "}", "bad_request"),
        ('{"op":"ping","id":"' + "x" * 10_000 + '"}', "too_large"),
        ('{"op":"subscribe","id":1,"topic":"../etc"}', "invalid_topic"),
        ('{"op":"subscribe","id":1,"topic":"$presence:t"}', "invalid_topic"),
    ],
)
async def test_malformed_frames_get_error_codes_and_a_control_client_is_unaffected(
    server: ServerProcess, frame: str, code: str
) -> None:
    topic = unique("ctl")
    control, bad = await AsyncClient.open(server), await AsyncClient.open(server)
    await control.result(op="subscribe", topic=topic)
    await bad.ws.send(frame)
    error = await bad.recv()
    assert error["type"] == "error" and error["code"] == code, error
    await bad.result(op="publish", topic=topic, data="still fine")
    assert (await control.recv())["data"] == "still fine"
    await bad.close()
    await control.close()


async def test_invalid_utf8_and_oversize_frames_close_with_documented_codes(
    server: ServerProcess,
) -> None:
    topic = unique("ctl")
    control = await AsyncClient.open(server)
    await control.result(op="subscribe", topic=topic)
    bad = await AsyncClient.open(server)
    bad.ws.protocol.send_text(b"\xff\xfe")  # not UTF-8: the server closes with 1007
    bad.ws.transport.write(b"".join(bad.ws.protocol.data_to_send()))
    with pytest.raises(ConnectionClosed) as closed:
        await bad.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1007

    big = await websockets.connect(f"{server.ws_url}/ws/connect/", max_size=None)
    await big.recv()
    await big.send(json.dumps({"op": "publish", "topic": topic, "data": "x" * 70_000}))
    with pytest.raises(ConnectionClosed) as closed:
        await asyncio.wait_for(big.recv(), timeout(5))
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009

    other = await AsyncClient.open(server)
    await other.result(op="publish", topic=topic, data="after")
    assert (await control.recv())["data"] == "after"
    await other.close()
    await control.close()


async def test_presence_entries_vanish_when_a_connection_dies(
    protocol_server: ServerProcess,
) -> None:
    topic = unique("room.e2e")
    watcher = await AsyncClient.open(protocol_server)
    await watcher.result(op="subscribe", topic=topic, info={"name": "watcher"})
    assert (await watcher.recv())["type"] == "join"
    leaver = await AsyncClient.open(protocol_server)
    await leaver.result(op="subscribe", topic=topic, info={"name": "leaver"})
    joined = await watcher.recv()
    assert joined["type"] == "join" and joined["info"] == {"name": "leaver"}
    assert (await watcher.result(op="presence", topic=topic))["count"] == 2
    leaver.ws.transport.abort()  # no close handshake: the TCP connection just dies
    left = await watcher.recv()
    assert left["type"] == "leave" and left["client"] == leaver.hello["client"]
    present = await watcher.result(op="presence", topic=topic)
    assert present["count"] == 1 and present["clients"][0]["info"] == {"name": "watcher"}
    await watcher.close()


async def test_durable_topics_keep_offsets_epoch_and_history_across_a_full_restart(
    server_factory: Callable[..., ServerProcess],
) -> None:
    topic = unique("durable.orders")
    first = server_factory(env=PROTOCOL_SETTINGS_ENV)
    client = await AsyncClient.open(first)
    replies = [await client.result(op="publish", topic=topic, data={"n": i}) for i in range(5)]
    assert [r["offset"] for r in replies] == [1, 2, 3, 4, 5]
    epoch = replies[0]["epoch"]
    await client.close()
    first.stop()  # every process of the deployment is gone; the database stays

    second = server_factory(env=PROTOCOL_SETTINGS_ENV)
    client = await AsyncClient.open(second)
    result = await client.result(op="subscribe", topic=topic, since={"offset": 3, "epoch": epoch})
    assert result == {
        "topic": topic,
        "offset": 5,
        "epoch": epoch,
        "recovered": True,
        "missed": 2,
    }
    assert [(await client.recv())["data"] for _ in range(2)] == [{"n": 3}, {"n": 4}]
    await client.send(op="publish", topic=topic, data="after restart")
    frames = [await client.recv(), await client.recv()]
    assert {(f["type"], f.get("offset") or f["result"]["offset"]) for f in frames} == {
        ("message", 6),
        ("reply", 6),
    }
    await client.close()
