"""Tier 2: a model saved in a sync view thread reaches WebSocket subscribers after the commit."""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.contrib.auth.models import Group
from django.db import transaction

import megaphone
from example.asgi import application
from megaphone.contrib.model_broadcast import unregister
from megaphone.testing import unique
from tests.conftest import timeout

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def topic() -> Iterator[str]:
    name = unique("groups")
    megaphone.broadcast_model(Group, topic=name, serialize=lambda group: {"name": group.name})
    yield name
    unregister(Group)


@sync_to_async
def save_in_a_transaction(name: str) -> int:
    with transaction.atomic():
        group = Group.objects.create(name=name)
        group.name = f"{name}!"
        group.save()
    return int(group.pk)


async def test_raw_and_protocol_subscribers_get_the_change_after_the_commit(topic: str) -> None:
    raw = WebsocketCommunicator(application, f"/ws/broadcast/{topic}/")
    assert (await raw.connect(timeout=timeout(5)))[0]
    protocol = WebsocketCommunicator(application, "/ws/connect/")
    assert (await protocol.connect(timeout=timeout(5)))[0]
    await protocol.receive_from(timeout=timeout(2))  # connected
    await protocol.send_to(text_data=json.dumps({"id": 1, "op": "subscribe", "topic": topic}))
    assert json.loads(await protocol.receive_from(timeout=timeout(2)))["type"] == "reply"

    pk = await save_in_a_transaction("staff")
    created = {"event": "created", "model": "auth.group", "pk": pk, "data": {"name": "staff"}}
    updated = {**created, "event": "updated", "data": {"name": "staff!"}}
    assert [json.loads(await raw.receive_from(timeout=timeout(5))) for _ in range(2)] == [
        created,
        updated,
    ]
    frames = [json.loads(await protocol.receive_from(timeout=timeout(5))) for _ in range(2)]
    assert [(f["offset"], f["data"]) for f in frames] == [(1, created), (2, updated)]
    await raw.disconnect()
    await protocol.disconnect()
