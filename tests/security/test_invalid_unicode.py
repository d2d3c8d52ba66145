"""Security tier, class 1: invalid Unicode gets in; a failed call fails alone.

Python's ``json`` decodes ``"\\ud800"`` into a lone surrogate, which UTF-8 cannot encode. Such a
string in a protocol frame or an HTTP API body used to be accepted, sent as invalid UTF-8 to every
subscriber (their client closed with 1007), replayed by recovery, and it broke the topic's HTTP
history (500); over Redis, its encode error killed the publish pipeline, failing or stranding the
publishes of other clients batched with it. Now every input passes one strict decoding boundary
(:mod:`megaphone.core.decoding`): the frame is refused with ``bad_request`` (the body with HTTP
400),
and nothing of it reaches the hub, history, a backend or another client.

Every test runs on 1 worker (memory backend) and on 2 workers over a private Redis.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
import websockets

from megaphone.testing import unique
from tests.conftest import ServerProcess, timeout
from tests.protocol_clients import AsyncClient

Start = Callable[..., ServerProcess]

KEY = "invalid-unicode-test-key-0123456789"
SETTINGS: dict[str, Any] = {"API_KEYS": [KEY], "API_RATE_LIMIT": None, "PUBLISH_RATE": 0}

#: JSON escapes of text that is not valid Unicode: a lone high surrogate, a lone low one, and a
#: pair in the wrong order (each half alone).
SURROGATES = {"high": "\\ud800", "low": "\\udc00", "reversed": "\\udc00\\ud800"}
BAD = "@BAD@"  # where the escape goes in a frame's JSON text


@pytest.fixture(params=["1-worker", "2-workers-redis"])
def server(request: pytest.FixtureRequest, attacked: Start) -> ServerProcess:
    if request.param == "1-worker":
        return attacked(**SETTINGS)
    redis_server = request.getfixturevalue("redis_server")
    return attacked(workers=2, backend=redis_server.url, **SETTINGS)


def with_bad(frame: dict[str, Any], escape: str) -> str:
    """``frame``'s JSON text with ``escape`` where ``BAD`` is."""
    return json.dumps(frame).replace(BAD, escape)


def attacks(topic: str) -> list[tuple[str, dict[str, Any], bool]]:
    """``(what, frame, id_readable)``: every field of a frame that carries text. The id is
    readable (and echoed in the error) unless it is the id that holds the bad text."""
    publish = {"op": "publish", "topic": topic, "data": "ok"}
    return [
        ("publish data", {**publish, "data": f"x{BAD}y"}, True),
        ("publish data in a value", {**publish, "data": {"k": [f"x{BAD}"]}}, True),
        ("publish data in a key", {**publish, "data": {BAD: 1}}, True),
        ("publish msg_id", {**publish, "msg_id": f"m{BAD}"}, True),
        ("publish topic", {**publish, "topic": f"t{BAD}"}, True),
        ("publish id", {**publish, "id": f"i{BAD}"}, False),
        ("subscribe info", {"op": "subscribe", "topic": unique("i"), "info": {"n": BAD}}, True),
        ("subscribe info key", {"op": "subscribe", "topic": unique("i"), "info": {BAD: 1}}, True),
        (
            "subscribe epoch",
            {"op": "subscribe", "topic": unique("e"), "since": {"offset": 0, "epoch": BAD}},
            True,
        ),
        ("history epoch", {"op": "history", "topic": topic, "epoch": f"e{BAD}"}, True),
        ("op", {"op": f"ping{BAD}"}, True),
    ]


def http(server: ServerProcess, method: str, path: str, body: bytes | None = None) -> Any:
    """``(status, JSON body)`` of an HTTP API call; the body is decoded as strict UTF-8."""
    request = urllib.request.Request(
        f"{server.http_url}/api/{path}",
        data=body,
        method=method,
        headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout(10)) as response:
            return response.status, json.loads(response.read().decode("utf-8"))
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read().decode("utf-8"))


async def history_of(server: ServerProcess, topic: str) -> list[Any]:
    status, body = await asyncio.to_thread(http, server, "GET", f"topics/{topic}/history")
    assert status == 200, body
    return [message["data"] for message in body["messages"]]


async def test_lone_surrogates_in_protocol_frames_are_refused_and_reach_no_one(
    server: ServerProcess,
) -> None:
    topic = unique("uni")
    watchers = [await AsyncClient.open(server) for _ in range(4)]
    for watcher in watchers:
        await watcher.result(op="subscribe", topic=topic)
    raw_watchers = [
        await websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/") for _ in range(2)
    ]
    attacker = await AsyncClient.open(server)

    for name, escape in SURROGATES.items():
        for what, frame, id_readable in attacks(topic):
            request_id = attacker.new_id()
            await attacker.send_text(with_bad({"id": request_id, **frame}, escape))
            error = await attacker.recv()
            assert error["type"] == "error", (name, what, error)
            assert error["code"] == "bad_request", (name, what, error)
            assert error["id"] == (request_id if id_readable else None), (name, what, error)

    # The attacker is still served, and the watchers got nothing before its next message.
    await attacker.result(op="publish", topic=topic, data="after")
    for watcher in watchers:
        message = await watcher.recv()
        assert (message["type"], message["data"]) == ("message", "after")
    for raw in raw_watchers:
        assert await asyncio.wait_for(raw.recv(), timeout(5)) == "after"

    # History holds the valid message only: over HTTP (200) and by recovery.
    assert await history_of(server, topic) == ["after"]
    late = await AsyncClient.open(server)
    result = await late.result(
        op="subscribe", topic=topic, since={"offset": 0, "epoch": message["epoch"]}
    )
    assert result["recovered"] is True
    assert (await late.recv())["data"] == "after"
    assert (await late.result(op="history", topic=topic))["messages"][0]["data"] == "after"
    for client in (*watchers, attacker, late):
        await client.ws.close()
    for raw in raw_watchers:
        await raw.close()


async def test_lone_surrogates_in_http_bodies_and_query_parameters_get_400(
    server: ServerProcess,
) -> None:
    topic = unique("api")
    escaped = '{"topic": "%s", "data": "x%sy"}'
    bodies = {
        **{
            f"data {name}": (escaped % (topic, escape)).encode()
            for name, escape in SURROGATES.items()
        },
        "msg_id": f'{{"topic": "{topic}", "data": "ok", "msg_id": "m\\ud800"}}'.encode(),
        "key": f'{{"topic": "{topic}", "data": {{"\\udc00": 1}}}}'.encode(),
        "surrogate encoded as UTF-8 bytes": f'{{"topic": "{topic}", "data": "x'.encode()
        + b'\xed\xa0\x80y"}',
        "bytes that are not UTF-8": f'{{"topic": "{topic}", "data": "x'.encode() + b'\xffy"}',
    }
    for what, body in bodies.items():
        status, answer = await asyncio.to_thread(http, server, "POST", "publish", body)
        assert (status, answer["error"]["code"]) == (400, "invalid_json"), what
    batch = f'{{"messages": [{{"topic": "{topic}", "data": "fine"}}, '
    batch += f'{{"topic": "{topic}", "data": "x\\ud800"}}]}}'
    status, answer = await asyncio.to_thread(http, server, "POST", "publish/batch", batch.encode())
    assert (status, answer["error"]["code"]) == (400, "invalid_json")

    for query in ("epoch=%ED%A0%80", "epoch=%FF", "since=%ED%A0%80", "%ED%B0%80=1"):
        path = f"topics/{topic}/history?{query}"
        status, answer = await asyncio.to_thread(http, server, "GET", path)
        assert (status, answer["error"]["code"]) == (400, "invalid_parameter"), query

    # Nothing was published, and the API still serves the topic.
    assert await history_of(server, topic) == []
    body = json.dumps({"topic": topic, "data": "valid é 😀"}).encode()
    status, answer = await asyncio.to_thread(http, server, "POST", "publish", body)
    assert status == 200, answer
    assert await history_of(server, topic) == ["valid é 😀"]


async def test_a_refused_publish_fails_alone_beside_concurrent_good_ones(
    server: ServerProcess,
) -> None:
    """Over Redis, publishes of many clients arriving in the same instant share one pipeline:
    the bad ones (a lone surrogate in ``msg_id``) must not fail or strand the good ones."""
    topic = unique("pipe")
    watcher = await AsyncClient.open(server)
    await watcher.result(op="subscribe", topic=topic)
    good = [await AsyncClient.open(server) for _ in range(6)]
    bad = [await AsyncClient.open(server) for _ in range(6)]
    rounds = 5
    for round_ in range(rounds):
        frames: list[tuple[AsyncClient, int, str]] = []
        for i, client in enumerate(good):
            request_id = client.new_id()
            text = json.dumps({"id": request_id, "op": "publish", "topic": topic, "data": i})
            frames.append((client, request_id, text))
        for client in bad:
            request_id = client.new_id()
            frame = {"id": request_id, "op": "publish", "topic": topic, "data": 0}
            frames.append((client, request_id, with_bad({**frame, "msg_id": BAD}, "\\ud800")))
        await asyncio.gather(*(client.send_text(text) for client, _, text in frames))
        answers = await asyncio.gather(*(client.answer(rid) for client, rid, _ in frames))
        for answer in answers[: len(good)]:
            assert answer["type"] == "reply", (round_, answer)
        for answer in answers[len(good) :]:
            assert (answer["type"], answer["code"]) == ("error", "bad_request"), (round_, answer)

    received = [await watcher.recv() for _ in range(rounds * len(good))]
    offsets = [message["offset"] for message in received]
    assert offsets == list(range(offsets[0], offsets[0] + rounds * len(good)))
    assert sorted(message["data"] for message in received) == sorted(
        list(range(len(good))) * rounds
    )
    for client in (watcher, *good, *bad):
        await client.ws.close()
