"""Tier 2: live revocation and occupancy in-process (in-memory backend): a save of the user
re-checks every connection of theirs (protocol: ``unsubscribed`` ``revoked``, the other topics
untouched; raw: 4403; inactive: 4401), and occupied/vacated are sent once per change."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import ThreadSensitiveContext
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connections
from django.test import override_settings

from example.asgi import application
from megaphone.server.hooks import topic_occupied, topic_vacated
from megaphone.server.tokens import issue_token
from megaphone.testing import Collected, ProtocolCommunicator, unique
from tests.conftest import timeout

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def make_user(name: str, **fields: object) -> Any:
    return get_user_model().objects.create_user(name, **fields)


async def save(user: Any, **fields: object) -> None:
    """Save ``user`` as a request of the project would: in a thread of its own (the consumers,
    started from this test's task, share its context: their database calls would wait for the
    thread that waits for their order)."""

    def saved() -> None:
        for name, value in fields.items():
            setattr(user, name, value)
        user.save()

    await changed(saved)


async def test_a_user_no_longer_staff_loses_the_staff_topics_only() -> None:
    alice = await make_user("alice", is_staff=True)
    client = ProtocolCommunicator(application, f"/ws/connect/?token={issue_token(alice)}")
    await client.connect()
    try:
        await client.result("subscribe", topic="_megaphone.ops")
        await client.result("subscribe", topic="news")
        await save(alice, is_staff=False)
        frame = await client.receive(lambda f: f["type"] == "unsubscribed")
        assert frame["topic"] == "_megaphone.ops" and frame["code"] == "revoked", frame
        assert (await client.request("subscribe", topic="news"))["code"] == "already_subscribed"
        reply = await client.request("subscribe", topic="_megaphone.ops")
        assert reply["code"] == "forbidden", reply
    finally:
        await client.close()


async def test_raw_clients_are_closed_4403_when_revoked_and_4401_when_inactive() -> None:
    bob = await make_user("bob", is_staff=True)
    token = issue_token(bob)
    staff = WebsocketCommunicator(application, f"/ws/broadcast/_megaphone.ops/?token={token}")
    own = WebsocketCommunicator(application, f"/ws/broadcast/user:{bob.pk}/?token={token}")
    for raw in (staff, own):
        connected, _ = await raw.connect(timeout=timeout(5))
        assert connected
    await save(bob, is_staff=False)
    assert await closed_with(staff) == 4403
    await save(bob, is_active=False)
    assert await closed_with(own) == 4401


async def closed_with(raw: WebsocketCommunicator) -> int:
    event = await raw.receive_output(timeout=timeout(5))
    assert event["type"] == "websocket.close", event
    return int(event["code"])


async def test_occupied_and_vacated_once_per_change_in_process() -> None:
    events: Collected[tuple[str, str]] = Collected()

    def occupied(sender: str, topic: str, **kwargs: Any) -> None:
        events.append(("occupied", topic))

    def vacated(sender: str, topic: str, **kwargs: Any) -> None:
        events.append(("vacated", topic))

    topic_occupied.connect(occupied)
    topic_vacated.connect(vacated)
    topic = unique("room")
    clients = [ProtocolCommunicator(application) for _ in range(3)]
    try:
        for client in clients:
            await client.connect()
            await client.result("subscribe", topic=topic)
        await events.wait_for(1)
        for client in clients:
            await client.close()
        await events.wait_for(2)
        assert events == [("occupied", topic), ("vacated", topic)]
    finally:
        topic_occupied.disconnect(occupied)
        topic_vacated.disconnect(vacated)


GROUP_RULES = {
    **settings.MEGAPHONE,
    "PERMISSIONS": [
        {"topics": "editors", "default": "group:editors"},
        {"topics": "reports", "default": "perm:auth.view_user"},
        {"topics": "*", "default": "anyone"},
    ],
}


@database_sync_to_async
def editor_with_a_group_permission(name: str) -> tuple[Any, Any]:
    from django.contrib.auth.models import Group, Permission

    user = get_user_model().objects.create_user(name)
    group, _ = Group.objects.get_or_create(name="editors")
    group.permissions.add(Permission.objects.get(codename="view_user"))
    user.groups.add(group)
    return user, group


async def changed(change: Any) -> None:
    """``change()`` in a thread of its own (see :func:`save`), whose database connection is
    closed after it (the thread is gone: nothing else would close it)."""

    def in_its_thread() -> None:
        try:
            change()
        finally:
            connections.close_all()

    async with ThreadSensitiveContext():
        await database_sync_to_async(in_its_thread)()


@override_settings(MEGAPHONE=GROUP_RULES)
async def test_every_side_of_the_memberships_and_permissions_re_checks() -> None:
    from django.contrib.auth.models import Permission

    carol, group = await editor_with_a_group_permission("carol")
    dave, _ = await editor_with_a_group_permission("dave")
    clients = {}
    for user in (carol, dave):
        client = ProtocolCommunicator(application, f"/ws/connect/?token={issue_token(user)}")
        await client.connect()
        await client.result("subscribe", topic="editors")
        await client.result("subscribe", topic="reports")
        clients[user.username] = client
    try:
        # The group's side: the group loses a permission, every member loses "reports".
        view_user = await database_sync_to_async(Permission.objects.get)(codename="view_user")
        await changed(lambda: group.permissions.remove(view_user))
        for client in clients.values():
            frame = await client.receive(lambda f: f["type"] == "unsubscribed")
            assert (frame["topic"], frame["code"]) == ("reports", "revoked"), frame
        # The reverse side of the membership, then a clear() from the user's side.
        await changed(lambda: group.user_set.remove(carol))
        frame = await clients["carol"].receive(lambda f: f["type"] == "unsubscribed")
        assert (frame["topic"], frame["code"]) == ("editors", "revoked"), frame
        await changed(lambda: dave.groups.clear())
        frame = await clients["dave"].receive(lambda f: f["type"] == "unsubscribed")
        assert (frame["topic"], frame["code"]) == ("editors", "revoked"), frame
    finally:
        for client in clients.values():
            await client.close()
