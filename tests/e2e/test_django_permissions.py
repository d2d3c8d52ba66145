"""Tier 3: Django's own permission model decides the topic policy, on a real ``manage.py
serve`` with real users: a ``perm:`` rule, a ``group:`` rule and an object rule (django-rules
as the object-permission backend), each allowed and refused, on the protocol endpoint
(subscribe, publish, history, presence) and on the raw endpoint."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.conftest import ROOT, ServerProcess, example_env, timeout
from tests.protocol_clients import AsyncClient

pytestmark = pytest.mark.e2e

ENV = {"DJANGO_SETTINGS_MODULE": "tests.e2e.django_settings", "PYTHONPATH": str(ROOT)}

#: alice: auth.view_user, member of the groups "red" and "editors"; bob: nothing. Printed as
#: JSON: their connection tokens and the groups' primary keys.
SETUP = """
import json
from django.contrib.auth.models import Group, Permission, User
from megaphone.server.tokens import issue_token
alice = User.objects.create_user("alice")
bob = User.objects.create_user("bob")
red, blue, editors = (Group.objects.create(name=n) for n in ("red", "blue", "editors"))
alice.user_permissions.add(Permission.objects.get(codename="view_user"))
alice.groups.add(red, editors)
print(json.dumps({"alice": issue_token(alice), "bob": issue_token(bob),
                  "red": red.pk, "blue": blue.pk}))
"""


@pytest.fixture
def world(server_factory: Callable[..., ServerProcess]) -> tuple[ServerProcess, dict[str, Any]]:
    server = server_factory(env=ENV)
    manage = [sys.executable, str(ROOT / "example" / "manage.py")]
    out = subprocess.run(
        [*manage, "shell", "-c", SETUP],
        env=example_env(server.log_path.parent, ENV),
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    return server, json.loads(out.strip().splitlines()[-1])


async def connect(server: ServerProcess, token: str) -> AsyncClient:
    ws = await websockets.connect(f"{server.ws_url}/ws/connect/?token={token}")
    client = AsyncClient(ws)
    client.hello = await client.recv()
    assert client.hello["type"] == "connected", client.hello
    return client


async def answer(client: AsyncClient, **request: Any) -> dict[str, Any]:
    request_id = await client.send(**request)
    reply = await client.recv()
    assert reply.get("id") == request_id, reply
    return reply


def forbidden(reply: dict[str, Any]) -> bool:
    return reply["type"] == "error" and reply["code"] == "forbidden"


async def test_perm_rule_allows_the_permission_holder_and_refuses_the_others(
    world: tuple[ServerProcess, dict[str, Any]],
) -> None:
    server, users = world
    alice, bob = await connect(server, users["alice"]), await connect(server, users["bob"])
    try:
        assert (await answer(alice, op="subscribe", topic="reports"))["type"] == "reply"
        assert (await answer(alice, op="history", topic="reports"))["type"] == "reply"
        # view_user, not change_user: she reads, she does not write
        assert forbidden(await answer(alice, op="publish", topic="reports", data="x"))
        for op in ("subscribe", "history", "presence"):
            assert forbidden(await answer(bob, op=op, topic="reports")), op
        assert (await answer(alice, op="subscribe", topic="editors"))["type"] == "reply"
        assert forbidden(await answer(bob, op="subscribe", topic="editors"))
    finally:
        await alice.close()
        await bob.close()


async def test_object_rule_asks_has_perm_with_the_topics_object(
    world: tuple[ServerProcess, dict[str, Any]],
) -> None:
    server, users = world
    red, blue = f"team:{users['red']}", f"team:{users['blue']}"
    alice, bob = await connect(server, users["alice"]), await connect(server, users["bob"])
    try:
        assert (await answer(alice, op="subscribe", topic=red))["type"] == "reply"
        await alice.send(op="publish", topic=red, data="hello red")
        frames = [await alice.recv(), await alice.recv()]  # the message and the reply, any order
        assert sorted(f["type"] for f in frames) == ["message", "reply"], frames
        assert next(f for f in frames if f["type"] == "message")["data"] == "hello red"
        assert forbidden(await answer(alice, op="subscribe", topic=blue))  # not a member
        assert forbidden(await answer(alice, op="subscribe", topic="team:999999"))  # no such group
        assert forbidden(await answer(alice, op="subscribe", topic="team:not-a-pk"))
        assert forbidden(await answer(bob, op="subscribe", topic=red))
        assert forbidden(await answer(bob, op="publish", topic=red, data="x"))
    finally:
        await alice.close()
        await bob.close()


async def test_the_raw_endpoint_takes_the_same_decisions(
    world: tuple[ServerProcess, dict[str, Any]],
) -> None:
    server, users = world
    red = f"team:{users['red']}"
    url = f"{server.ws_url}/ws/broadcast/{red}/?token="
    async with websockets.connect(url + users["alice"]) as alice:
        await alice.send("to the team")
        assert await alice.recv(timeout(5)) == "to the team"
    with pytest.raises(InvalidStatus) as refused:
        await websockets.connect(url + users["bob"])
    assert refused.value.response.status_code == 403
    # alice may read reports, not write them: her first frame closes her socket with 4403
    async with websockets.connect(
        f"{server.ws_url}/ws/broadcast/reports/?token={users['alice']}"
    ) as reader:
        await reader.send("not hers to say")
        with pytest.raises(ConnectionClosed) as closed:
            await reader.recv(timeout(5))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
