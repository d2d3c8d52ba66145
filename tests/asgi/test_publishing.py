"""Tier 2: publish() from plain threads and apublish() reach WebSocket subscribers in-process."""

from __future__ import annotations

import asyncio
import json
import threading
import warnings

from channels.testing import WebsocketCommunicator

import megaphone
from example.asgi import application
from megaphone.engine.background import background
from megaphone.testing import unique
from tests.conftest import timeout


async def subscribe(topic: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, f"/ws/broadcast/{topic}/")
    connected, code = await communicator.connect(timeout=timeout(5))
    assert connected, code
    return communicator


async def test_a_thousand_sync_publishes_from_a_plain_thread_all_arrive_in_order() -> None:
    topic = unique("sync")
    subscriber = await subscribe(topic)
    loops_before = background.loops_started
    nodes_before = background.nodes_started
    offsets: list[int] = []
    caught: list[warnings.WarningMessage] = []
    errors: list[BaseException] = []

    def publish_loop() -> None:
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            try:
                for i in range(1000):
                    offsets.append(megaphone.publish(topic, f"message {i}").offset)
            except BaseException as exc:
                errors.append(exc)
        caught.extend(record)

    thread = threading.Thread(target=publish_loop)
    thread.start()
    received = [await subscriber.receive_from(timeout=timeout(5)) for _ in range(1000)]
    await asyncio.get_running_loop().run_in_executor(None, thread.join)

    assert errors == [] and caught == []
    assert received == [f"message {i}" for i in range(1000)]
    assert offsets == list(range(1, 1001))
    # Bounded: one background publisher thread for the process, started at most once here,
    # with one node (one backend), whatever the number of calls.
    names = [t.name for t in threading.enumerate()]
    assert names.count("megaphone-publisher") == 1
    assert background.loops_started - loops_before <= 1
    assert background.nodes_started - nodes_before <= 1
    assert await subscriber.receive_nothing(timeout=0.1)
    await subscriber.disconnect()


async def test_many_threads_publish_through_one_loop_and_every_message_arrives() -> None:
    topic = unique("threads")
    subscriber = await subscribe(topic)
    await asyncio.to_thread(megaphone.publish, topic, "first")
    assert await subscriber.receive_from(timeout=timeout(5)) == "first"
    loops, nodes = background.loops_started, background.nodes_started

    def worker(n: int) -> None:
        for i in range(50):
            megaphone.publish(topic, f"{n}:{i}")

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(10)]
    for thread in threads:
        thread.start()
    received = [await subscriber.receive_from(timeout=timeout(5)) for _ in range(500)]
    for thread in threads:
        await asyncio.to_thread(thread.join)
    for n in range(10):  # each thread's messages in the order it sent them
        assert [m for m in received if m.startswith(f"{n}:")] == [f"{n}:{i}" for i in range(50)]
    assert (background.loops_started, background.nodes_started) == (
        loops,
        nodes,
    )
    await subscriber.disconnect()


async def test_apublish_reaches_subscribers_as_text_binary_and_json() -> None:
    topic = unique("async")
    subscriber = await subscribe(topic)
    first = await megaphone.apublish(topic, "text")
    await megaphone.apublish(topic, b"\x00bytes")
    last = await megaphone.apublish(topic, {"n": 1, "list": [1, 2]})
    assert await subscriber.receive_output(timeout=timeout(2)) == {
        "type": "websocket.send",
        "text": "text",
    }
    assert await subscriber.receive_output(timeout=timeout(2)) == {
        "type": "websocket.send",
        "bytes": b"\x00bytes",
    }
    assert await subscriber.receive_from(timeout=timeout(2)) == '{"n":1,"list":[1,2]}'
    assert (first.offset, last.offset, last.epoch) == (1, 3, first.epoch)
    await subscriber.disconnect()


async def test_protocol_clients_receive_a_published_json_value_as_the_value() -> None:
    topic = unique("json")
    communicator = WebsocketCommunicator(application, "/ws/connect/")
    connected, code = await communicator.connect(timeout=timeout(5))
    assert connected, code
    assert json.loads(await communicator.receive_from(timeout=timeout(2)))["type"] == "connected"
    await communicator.send_to(text_data=json.dumps({"id": 1, "op": "subscribe", "topic": topic}))
    assert json.loads(await communicator.receive_from(timeout=timeout(2)))["type"] == "reply"
    await asyncio.to_thread(megaphone.publish, topic, {"status": "paid", "items": [1, 2]})
    await megaphone.apublish(topic, "plain text")
    frames = [json.loads(await communicator.receive_from(timeout=timeout(2))) for _ in range(2)]
    assert [(f["type"], f["offset"], f["data"]) for f in frames] == [
        ("message", 1, {"status": "paid", "items": [1, 2]}),
        ("message", 2, "plain text"),
    ]
    await communicator.disconnect()
