"""Tier 2: the multiplexed JSON protocol endpoint in-process, through WebsocketCommunicator."""

from __future__ import annotations

import json
from typing import Any

import pytest
from channels.testing import WebsocketCommunicator
from django.test import override_settings

from example.asgi import application
from megaphone.testing import ProtocolCommunicator, unique
from tests.conftest import timeout
from tests.settings import OPEN_PERMISSIONS


async def connect(path: str = "/ws/connect/") -> ProtocolCommunicator:
    client = ProtocolCommunicator(application, path)
    await client.connect()
    return client


async def raw(topic: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"/ws/broadcast/{topic}/")
    connected, code = await communicator.connect(timeout=timeout(5))
    assert connected, code
    return communicator


async def test_connected_frame_then_ping_pong() -> None:
    client = await connect()
    assert client.hello["type"] == "connected" and client.hello["version"] == 1
    assert isinstance(client.hello["client"], str) and client.hello["client"]
    assert await client.request(op="ping") == {"type": "pong", "id": 1}
    await client.close()


async def test_one_connection_subscribes_to_many_topics_and_publishes() -> None:
    a, b = unique("a"), unique("b")
    client, other = await connect(), await connect()
    first = await client.result(op="subscribe", topic=a)
    assert first == {"topic": a, "offset": 0, "epoch": first["epoch"]}
    await client.result(op="subscribe", topic=b)
    published = await other.result(op="publish", topic=a, data={"n": 1})
    assert published == {"topic": a, "offset": 1, "epoch": first["epoch"]}
    await other.result(op="publish", topic=b, data="to b")
    assert await client.receive() == {
        "type": "message",
        "topic": a,
        "offset": 1,
        "epoch": first["epoch"],
        "data": {"n": 1},
    }
    assert (await client.receive())["data"] == "to b"
    assert await client.result(op="unsubscribe", topic=a) == {"topic": a}
    await other.result(op="publish", topic=a, data="not for client")
    assert await client.receive_nothing(0.2)
    await client.close()
    await other.close()


async def test_raw_and_protocol_clients_share_topics() -> None:
    topic = unique("news")
    client, wscat = await connect(), await raw(topic)
    await client.result(op="subscribe", topic=topic)

    await wscat.send_to(text_data='{"looks":"like json"}')
    assert (await client.receive())["data"] == '{"looks":"like json"}'  # raw text stays a string
    assert await wscat.receive_from(timeout=timeout(3)) == '{"looks":"like json"}'
    await wscat.send_to(bytes_data=b"\x00\xff")
    message = await client.receive()
    assert message["data"] == "AP8=" and message["binary"] is True
    assert await wscat.receive_from(timeout=timeout(3)) == b"\x00\xff"

    await client.send(op="publish", topic=topic, data={"a": [1, 2]})
    await client.send(op="publish", topic=topic, data="bare string")
    await client.send(op="publish", topic=topic, data=42)
    await client.send(op="publish", topic=topic, data="AQI=", binary=True)
    assert await wscat.receive_from(timeout=timeout(3)) == '{"a":[1,2]}'
    assert await wscat.receive_from(timeout=timeout(3)) == "bare string"
    assert await wscat.receive_from(timeout=timeout(3)) == "42"
    assert await wscat.receive_from(timeout=timeout(3)) == b"\x01\x02"
    frames = [await client.receive() for _ in range(8)]
    data = [f["data"] for f in frames if f["type"] == "message"]
    assert data == [{"a": [1, 2]}, "bare string", 42, "AQI="]
    assert [f["offset"] for f in frames if f["type"] == "message"] == [3, 4, 5, 6]
    await client.close()
    await wscat.disconnect()


async def test_a_retried_publish_with_the_same_msg_id_is_delivered_once() -> None:
    topic = unique("idem")
    client = await connect()
    await client.result(op="subscribe", topic=topic)
    first = await client.send(op="publish", topic=topic, data="once", msg_id="m-1")
    frames = [await client.receive(), await client.receive()]
    retry = await client.send(op="publish", topic=topic, data="once", msg_id="m-1")
    again = await client.receive()
    assert again["id"] == retry and again["result"]["offset"] == 1
    assert {f.get("id") for f in frames} == {first, None}
    await client.send(op="publish", topic=topic, data="other", msg_id="m-2")
    assert {
        (f["type"], f.get("offset")) for f in [await client.receive(), await client.receive()]
    } == {
        ("message", 2),
        ("reply", None),
    }
    await client.close()


async def test_recovery_returns_exactly_the_missed_messages_then_live_ones() -> None:
    topic = unique("rec")
    client, wscat = await connect(), await raw(topic)
    start = await client.result(op="subscribe", topic=topic)
    await wscat.send_to(text_data="seen")
    assert (await client.receive())["offset"] == 1
    await client.result(op="unsubscribe", topic=topic)
    for i in range(5):
        await wscat.send_to(text_data=f"missed {i}")
    for _ in range(6):
        await wscat.receive_from(timeout=timeout(3))

    since = {"offset": 1, "epoch": start["epoch"]}
    result = await client.result(op="subscribe", topic=topic, since=since)
    assert result == {
        "topic": topic,
        "offset": 6,
        "epoch": start["epoch"],
        "recovered": True,
        "missed": 5,
    }
    recovered = [await client.receive() for _ in range(5)]
    expected = [(i + 2, f"missed {i}") for i in range(5)]
    assert [(m["offset"], m["data"]) for m in recovered] == expected
    await wscat.send_to(text_data="live")
    assert (await client.receive())["offset"] == 7
    assert await client.receive_nothing(0.2)
    await client.close()
    await wscat.disconnect()


async def test_recovery_fails_plainly_on_another_epoch_or_a_future_offset() -> None:
    topic = unique("epoch")
    client = await connect()
    await client.result(op="publish", topic=topic, data="x")
    result = await client.result(
        op="subscribe", topic=topic, since={"offset": 0, "epoch": "not-the-epoch"}
    )
    assert result["recovered"] is False and result["missed"] == 0 and result["offset"] == 1
    await client.result(op="unsubscribe", topic=topic)
    future = {"offset": 9, "epoch": result["epoch"]}
    assert (await client.result(op="subscribe", topic=topic, since=future))["recovered"] is False
    assert await client.receive_nothing(0.2)
    await client.close()


async def miss_four_messages(client: ProtocolCommunicator, topic: str) -> dict[str, object]:
    """Subscribe and leave ``topic``, then publish 4 messages there; the position from before
    them (offset 0 of the topic's epoch)."""
    start = await client.result(op="subscribe", topic=topic)
    await client.result(op="unsubscribe", topic=topic)
    for i in range(4):
        await client.result(op="publish", topic=topic, data=i)
    return {"offset": 0, "epoch": start["epoch"]}


@override_settings(
    MEGAPHONE={"TOPICS": {"short.*": {"history_size": 3}}, "PERMISSIONS": OPEN_PERMISSIONS}
)
async def test_recovery_fails_when_the_gap_is_beyond_history() -> None:
    topic = unique("short.h")
    client = await connect()
    since = await miss_four_messages(client, topic)
    result = await client.result(op="subscribe", topic=topic, since=since)
    assert result["recovered"] is False and result["offset"] == 4
    await client.send(op="publish", topic=topic, data="live")
    # Only live messages follow: nothing of the partial history.
    frames = [await client.receive(), await client.receive()]
    assert [f["offset"] for f in frames if f["type"] == "message"] == [5]
    # Within history, it recovers.
    await client.result(op="unsubscribe", topic=topic)
    ok = await client.result(op="subscribe", topic=topic, since={**since, "offset": 3})
    assert ok["recovered"] is True and ok["missed"] == 2
    assert [(await client.receive())["offset"] for _ in range(2)] == [4, 5]
    await client.close()


@override_settings(MEGAPHONE={"RECOVERY_MAX_MESSAGES": 3, "PERMISSIONS": OPEN_PERMISSIONS})
async def test_recovery_fails_beyond_the_maximum_count() -> None:
    topic = unique("max")
    client = await connect()
    since = await miss_four_messages(client, topic)
    assert (await client.result(op="subscribe", topic=topic, since=since))["recovered"] is False
    assert await client.receive_nothing(0.2)
    await client.close()


async def test_history_op() -> None:
    topic = unique("hist")
    client = await connect()
    for i in range(5):
        await client.result(op="publish", topic=topic, data={"i": i})
    answer = await client.result(op="history", topic=topic, since=2, limit=2)
    assert answer["offset"] == 5 and answer["complete"] is True
    assert [(m["offset"], m["data"]) for m in answer["messages"]] == [(3, {"i": 2}), (4, {"i": 3})]
    other_epoch = await client.result(op="history", topic=topic, since=4, epoch="old")
    assert other_epoch["complete"] is False and len(other_epoch["messages"]) == 5
    await client.close()


@override_settings(
    MEGAPHONE={
        "TOPICS": {"room.*": {"presence": True, "join_leave": True}, "quiet.*": {"presence": True}}
    }
)
async def test_presence_join_and_leave() -> None:
    topic = unique("room.p")
    alice, bob = await connect(), await connect()
    await alice.result(op="subscribe", topic=topic, info={"name": "Alice"})
    assert (await alice.receive()) == {
        "type": "join",
        "topic": topic,
        "client": alice.hello["client"],
        "user": None,
        "info": {"name": "Alice"},
    }
    await bob.result(op="subscribe", topic=topic)
    for client in (alice, bob):
        joined = await client.receive()
        assert joined["type"] == "join" and joined["client"] == bob.hello["client"]
    present = await alice.result(op="presence", topic=topic)
    assert present["count"] == 2
    assert {c["client"] for c in present["clients"]} == {alice.hello["client"], bob.hello["client"]}
    await bob.close()  # the connection dies: its entry goes, and a leave is sent
    left = await alice.receive()
    assert left["type"] == "leave" and left["client"] == bob.hello["client"]
    assert (await alice.result(op="presence", topic=topic))["count"] == 1

    quiet = unique("quiet.q")
    await alice.result(op="subscribe", topic=quiet)
    assert (await alice.result(op="presence", topic=quiet))["count"] == 1
    assert await alice.receive_nothing(0.2)  # presence without join/leave events
    await alice.close()


async def test_presence_is_forbidden_where_it_is_off() -> None:
    client = await connect()
    answer = await client.request(op="presence", topic=unique("nopresence"))
    assert answer["type"] == "error" and answer["code"] == "forbidden"
    await client.close()


@override_settings(MEGAPHONE={"TOPICS": {"readonly.*": {"publish": False}}, "MAX_SUBSCRIPTIONS": 2})
async def test_refusals_have_codes_and_keep_the_connection() -> None:
    client = await connect()
    topic = unique("readonly.r")

    async def error(**request: Any) -> str:
        answer = await client.request(**request)
        assert answer["type"] == "error", answer
        return answer["code"]  # type: ignore[no-any-return]

    assert await error(op="publish", topic=topic, data="x") == "forbidden"
    assert await error(op="unsubscribe", topic=topic) == "not_subscribed"
    await client.result(op="subscribe", topic=topic)
    assert await error(op="subscribe", topic=topic) == "already_subscribed"
    await client.result(op="subscribe", topic=unique("two"))
    assert await error(op="subscribe", topic=unique("three")) == "too_many_subscriptions"
    assert await client.request(op="ping") == {"type": "pong", "id": client.last_id}
    await client.close()


@override_settings(
    MEGAPHONE={"PUBLISH_RATE": 1, "PUBLISH_BURST": 2, "PERMISSIONS": OPEN_PERMISSIONS}
)
async def test_publishing_too_fast_is_refused_with_rate_limited() -> None:
    client = await connect()
    topic = unique("rate")
    codes = [(await client.request(op="publish", topic=topic, data=i))["type"] for i in range(3)]
    assert codes == ["reply", "reply", "error"]
    await client.close()


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{not json", "bad_request"),
        ('{"op":"dance","id":1}', "unknown_op"),
        ('{"op":"subscribe","id":1,"topic":["x"]}', "invalid_topic"),
        ('{"op":"subscribe","id":1,"topic":"no spaces"}', "invalid_topic"),
        ('{"op":"publish","id":"' + "i" * 1000 + '","topic":"t","data":1}', "too_large"),
        ('{"op":"ping","id":' + "1" * 5000 + "}", "bad_request"),
        ('{"op":"history","id":1,"topic":"t","limit":"all"}', "bad_request"),
    ],
)
async def test_malformed_frames_get_an_error_frame_and_others_are_unaffected(
    frame: str, code: str
) -> None:
    topic = unique("mal")
    bad, control = await connect(), await connect()
    await control.result(op="subscribe", topic=topic)
    await bad.websocket.send_to(text_data=frame)
    answer = await bad.receive()
    assert answer["type"] == "error" and answer["code"] == code and answer["message"]
    assert await bad.request(op="ping") == {"type": "pong", "id": 1}  # still usable
    await bad.result(op="publish", topic=topic, data="after")
    assert (await control.receive())["data"] == "after"
    await bad.close()
    await control.close()


async def test_binary_frames_get_an_error_and_oversize_frames_close_1009() -> None:
    client = await connect()
    await client.websocket.send_to(bytes_data=b"\x00")
    assert (await client.receive())["code"] == "bad_request"
    with override_settings(MEGAPHONE={"MAX_MESSAGE_SIZE": 100}):
        small = await connect()
        await small.websocket.send_to(text_data=json.dumps({"op": "ping", "id": "x" * 100}))
        assert await small.websocket.receive_output(timeout=timeout(3)) == {
            "type": "websocket.close",
            "code": 1009,
        }
        await small.close()
    await client.close()
