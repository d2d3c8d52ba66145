"""Tier 2: who may connect and do what: tokens, sessions, the permission policy."""

from __future__ import annotations

import asyncio

import pytest
from channels.db import database_sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client as DjangoClient

from example.asgi import application
from megaphone.server.tokens import issue_token
from megaphone.testing import ProtocolCommunicator
from tests.conftest import timeout

pytestmark = pytest.mark.django_db(transaction=True)


@database_sync_to_async
def make_user(name: str, **fields: object):
    return get_user_model().objects.create_user(name, password="a-long-test-password", **fields)


async def attempt(
    path: str, headers: list[tuple[bytes, bytes]] | None = None
) -> tuple[bool, WebsocketCommunicator]:
    communicator = WebsocketCommunicator(application, path, headers=headers)
    connected, _ = await communicator.connect(timeout=timeout(5))
    return connected, communicator


async def protocol(path: str) -> ProtocolCommunicator:
    client = ProtocolCommunicator(application, path)
    await client.connect()
    return client


async def test_anonymous_raw_client_cannot_open_someone_elses_private_topic(caplog) -> None:
    alice = await make_user("alice")
    connected, _ = await attempt(f"/ws/broadcast/user:{alice.pk}/")
    assert not connected
    assert "may not subscribe" in caplog.text


@database_sync_to_async
def session_cookie(user: object) -> bytes:
    browser = DjangoClient()
    browser.force_login(user)
    return f"csrftoken=x; {settings.SESSION_COOKIE_NAME}={browser.session.session_key}".encode()


async def test_the_session_cookie_still_authenticates_and_other_cookies_do_not() -> None:
    alice = await make_user("alice")
    cookie = await session_cookie(alice)
    connected, own = await attempt(f"/ws/broadcast/user:{alice.pk}/", [(b"cookie", cookie)])
    assert connected
    await own.disconnect()
    other_cookies = [(b"cookie", b"csrftoken=x; theme=dark")]
    connected, _ = await attempt(f"/ws/broadcast/user:{alice.pk}/", other_cookies)
    assert not connected


async def test_a_token_opens_its_owners_private_topic_only() -> None:
    alice, bob = await make_user("alice"), await make_user("bob")
    token = await database_sync_to_async(issue_token)(alice)
    connected, own = await attempt(f"/ws/broadcast/user:{alice.pk}/?token={token}")
    assert connected
    await own.send_to(text_data="to myself")
    assert await own.receive_from(timeout=timeout(2)) == "to myself"
    await own.disconnect()
    connected, _ = await attempt(f"/ws/broadcast/user:{bob.pk}/?token={token}")
    assert not connected


async def test_a_token_is_read_from_the_decoded_query_as_the_logs_redact_it() -> None:
    """``?%74oken=`` is ``?token=``: one decoding decides both who connects and what is redacted;
    a query that is not UTF-8 once decoded refuses the handshake."""
    alice = await make_user("alice")
    token = await database_sync_to_async(issue_token)(alice)
    connected, own = await attempt(f"/ws/broadcast/user:{alice.pk}/?%74oken={token}")
    assert connected
    await own.disconnect()
    connected, _ = await attempt(f"/ws/broadcast/?token={token}&x=%ED%A0%80")
    assert not connected


async def test_protocol_refuses_private_topics_with_forbidden_and_sends_nothing() -> None:
    alice = await make_user("alice")
    owner = await protocol(f"/ws/connect/?token={await database_sync_to_async(issue_token)(alice)}")
    stranger = await protocol("/ws/connect/")
    topic = f"user:{alice.pk}"
    for op in ("subscribe", "publish", "history", "presence"):
        request = {"op": op, "topic": topic}
        if op == "publish":
            request["data"] = "x"
        answer = await stranger.request(**request)
        assert answer["type"] == "error" and answer["code"] == "forbidden", answer
    assert (await owner.result(op="subscribe", topic=topic))["topic"] == topic
    await owner.send(op="publish", topic=topic, data="secret")
    frames = [await owner.receive(), await owner.receive()]  # the message and the publish reply
    assert sorted(f["type"] for f in frames) == ["message", "reply"]
    assert next(f for f in frames if f["type"] == "message")["data"] == "secret"
    assert await stranger.receive_nothing(0.2)
    await owner.close()
    await stranger.close()


@pytest.mark.parametrize("token", ["garbage", "expired"])
async def test_bad_or_expired_tokens_are_refused_at_handshake(token: str, caplog) -> None:
    if token == "expired":
        token = await database_sync_to_async(issue_token)(await make_user("carol"), ttl=-1)
    connected, _ = await attempt(f"/ws/connect/?token={token}")
    assert not connected
    assert "token refused" in caplog.text
    assert token not in caplog.text  # tokens never reach the logs


async def test_a_token_of_a_deactivated_user_is_refused() -> None:
    dave = await make_user("dave", is_active=False)
    token = await database_sync_to_async(issue_token)(dave)
    assert not (await attempt(f"/ws/broadcast/?token={token}"))[0]


async def test_connection_closes_with_4401_when_its_token_expires() -> None:
    erin = await make_user("erin")
    token = await database_sync_to_async(issue_token)(erin, ttl=0.5)
    connected, communicator = await attempt(f"/ws/broadcast/?token={token}")
    assert connected
    event = await asyncio.wait_for(communicator.receive_output(timeout(5)), timeout(5))
    assert event == {"type": "websocket.close", "code": 4401}
    await communicator.disconnect()
