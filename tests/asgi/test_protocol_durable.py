"""Tier 2: durable topics keep offsets, epoch and history in the Django database."""

from __future__ import annotations

import pytest
from django.test import override_settings

from megaphone.backends import database
from megaphone.models import DurableMessage, DurableTopic
from tests.asgi.test_protocol import connect, raw, unique
from tests.conftest import timeout
from tests.settings import OPEN_PERMISSIONS

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("durable_topics"),
]


@pytest.fixture
def durable_topics():
    with override_settings(
        MEGAPHONE={
            "TOPICS": {"durable.*": {"durable": True, "history_size": 5}},
            "PERMISSIONS": OPEN_PERMISSIONS,
        }
    ):
        yield


async def test_durable_topic_numbers_stores_and_recovers_from_the_database() -> None:
    topic = unique("durable.a")
    client, wscat = await connect(), await raw(topic)
    start = await client.result(op="subscribe", topic=topic)
    assert start["offset"] == 0 and start["epoch"] == database.initial_epoch(topic)
    assert not await DurableTopic.objects.filter(name=topic).aexists()  # a read writes nothing
    await client.send(op="publish", topic=topic, data={"k": 1}, msg_id="x1")
    frames = [await client.receive(), await client.receive()]
    assert {f["type"] for f in frames} == {"reply", "message"}
    # The first publish creates the row in the epoch the subscriber was told: no gap.
    topic_row = await DurableTopic.objects.aget(name=topic)
    assert topic_row.epoch == start["epoch"]
    assert [f["epoch"] for f in frames if f["type"] == "message"] == [start["epoch"]]
    await wscat.send_to(text_data="raw text")
    await wscat.send_to(bytes_data=b"\x00\x01")
    frames = [await client.receive(), await client.receive()]
    assert [(f["offset"], f["data"]) for f in frames] == [(2, "raw text"), (3, "AAE=")]
    assert [await wscat.receive_from(timeout=timeout(3)) for _ in range(3)] == [
        '{"k":1}',
        "raw text",
        b"\x00\x01",
    ]
    assert await DurableMessage.objects.filter(topic=topic).acount() == 3

    # A retried publish is found in the database and not delivered again.
    again = await client.result(op="publish", topic=topic, data={"k": 1}, msg_id="x1")
    assert again["offset"] == 1
    assert await client.receive_nothing(0.2)

    await client.result(op="unsubscribe", topic=topic)
    for i in range(2):
        await wscat.send_to(text_data=f"missed {i}")
    for i in range(2):  # numbered once the sender gets them back
        assert await wscat.receive_from(timeout=timeout(3)) == f"missed {i}"
    since = {"offset": 3, "epoch": start["epoch"]}
    result = await client.result(op="subscribe", topic=topic, since=since)
    assert result["recovered"] is True and result["missed"] == 2
    assert [(await client.receive())["data"] for _ in range(2)] == ["missed 0", "missed 1"]
    await client.close()
    await wscat.disconnect()


async def test_durable_history_is_bounded_and_says_when_it_is_incomplete() -> None:
    topic = unique("durable.b")
    client = await connect()
    for i in range(8):
        await client.result(op="publish", topic=topic, data=i)
    assert await DurableMessage.objects.filter(topic=topic).acount() == 5
    answer = await client.result(op="history", topic=topic, since=0)
    assert answer["complete"] is False and answer["offset"] == 8
    assert [m["offset"] for m in answer["messages"]] == [4, 5, 6, 7, 8]
    answer = await client.result(op="history", topic=topic, since=5, limit=2)
    assert answer["complete"] is True and [m["data"] for m in answer["messages"]] == [5, 6]
    start = await client.result(op="history", topic=topic, since=8, limit=0)
    result = await client.result(
        op="subscribe", topic=topic, since={"offset": 1, "epoch": start["epoch"]}
    )
    assert result["recovered"] is False
    await client.close()


def test_append_retries_and_numbers_without_gaps() -> None:
    topic = unique("durable.c")
    offsets = [database.append(topic, f"m{i}", size=100)[0].offset for i in range(20)]
    assert offsets == list(range(1, 21))
    page = database.history(topic, 10, 5, size=100)
    assert [m.payload for m in page.messages] == ["m10", "m11", "m12", "m13", "m14"]
    assert page.complete and page.offset == 20


def test_expired_messages_are_deleted_in_the_background_in_bounded_batches(monkeypatch) -> None:
    monkeypatch.setattr(database, "EXPIRE_BATCH", 2)
    topics = sorted(unique("durable.x") for _ in range(3))
    for topic in topics:
        database.append(topic, "old")
    DurableMessage.objects.filter(topic__in=topics).update(time=0.0)  # published long ago
    database.append(topics[0], "new")

    def limits(topic: str) -> tuple[int, float]:
        return 100, 600.0

    assert database.expire("", limits) == topics[1]  # two topics at a time...
    assert database.expire(topics[1], limits) == ""  # ...then the round is over
    assert [m.text for m in DurableMessage.objects.filter(topic__in=topics)] == ["new"]
    page = database.history(topics[1], 0)  # its row stays: the epoch and offset live on
    assert (page.offset, page.messages, page.complete) == (1, [], False)
