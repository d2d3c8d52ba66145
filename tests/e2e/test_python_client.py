"""Tier 3: ``megaphone.client`` against real server processes.

The client must survive what a deployment does to it: a server restart (it reconnects,
resubscribes with ``since`` and gets every missed message once, in order), a restart that lost the
history (``recovered: false`` surfaces as :class:`RecoveryFailed` or ``on_recovery_failed``), and
a reply lost to a network cut (the publish is sent again with its ``msg_id``: published once).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from megaphone.client import (
    Client,
    ClientError,
    Message,
    PresenceEvent,
    RecoveryFailed,
    SubscribeResult,
    Subscription,
)
from megaphone.testing import unique
from tests.conftest import ServerProcess, create_superuser, timeout
from tests.redis_server import RedisServer

from .proxy import CuttableProxy
from .test_logout import Browser


def reconnecting(url: str, **options: Any) -> Client:
    """A client that reconnects quickly (the tests restart servers under it)."""
    return Client(url, min_delay=0.05, max_delay=0.5, **options)


def connect_url(server: ServerProcess | CuttableProxy) -> str:
    return f"ws://127.0.0.1:{server.port}/ws/connect/"


async def next_message(subscription: Subscription, seconds: float = 10) -> Message:
    item = await asyncio.wait_for(anext(subscription), timeout(seconds))
    assert isinstance(item, Message), item
    return item


async def test_a_subscriber_recovers_every_message_missed_while_the_server_restarted(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    """One worker over a private Redis: history survives the restart of the server process."""
    env = {"REDIS_URL": redis_server.url}
    server = server_factory(env=env)
    topic = unique("news")
    states: list[tuple[str, int | None]] = []
    on_state = lambda state, code: states.append((state, code))  # noqa: E731
    async with reconnecting(connect_url(server), on_state=on_state) as reader:
        news = await reader.subscribe(topic)
        async with Client(connect_url(server)) as publisher:
            for i in range(3):
                await publisher.publish(topic, {"n": i})
        before = [await next_message(news) for _ in range(3)]

        server.stop()  # SIGTERM: the server closes its connections and exits
        other = server_factory(env=env)  # another process on the same Redis, while it is down
        async with Client(connect_url(other)) as publisher:
            missed = [await publisher.publish(topic, {"n": i}) for i in range(3, 23)]
        other.stop()
        server_factory(env=env, port=server.port)  # the reader's server is back

        recovered = [await next_message(news) for _ in range(20)]
        async with Client(connect_url(server)) as publisher:
            live = await publisher.publish(topic, "live")
        after = await next_message(news)

    assert [m.data for m in before + recovered] == [{"n": i} for i in range(23)]
    assert [m.offset for m in before + recovered + [after]] == list(range(1, 25))
    assert [m.offset for m in recovered] == [p.offset for p in missed]
    assert (after.data, after.offset) == ("live", live.offset)
    assert ("closed", 1012) in states and states.count(("open", None)) == 2


async def test_a_restart_that_lost_the_history_raises_recovery_failed_then_goes_on_live(
    server_factory: Callable[..., ServerProcess],
) -> None:
    """The memory backend forgets everything: a new epoch, so the gap cannot be filled."""
    server = server_factory()
    iterated, called = unique("iterated"), unique("called")
    failures: list[SubscribeResult] = []
    async with reconnecting(connect_url(server)) as reader:
        plain = await reader.subscribe(iterated)
        with_callback = await reader.subscribe(called, on_recovery_failed=failures.append)
        async with Client(connect_url(server)) as publisher:
            first = await publisher.publish(iterated, "first life")
            await publisher.publish(called, "first life")
        assert (await next_message(plain)).data == "first life"
        assert (await next_message(with_callback)).data == "first life"

        server.stop()
        restarted = server_factory(port=server.port)

        try:
            item = await asyncio.wait_for(anext(plain), timeout(20))
        except RecoveryFailed as failure:
            lost = failure.result
        else:
            raise AssertionError(f"expected RecoveryFailed, got {item}")
        assert lost.topic == iterated and lost.recovered is False and lost.epoch != first.epoch
        async with Client(connect_url(restarted)) as publisher:
            await publisher.publish(iterated, "second life")
            await publisher.publish(called, "second life")
        second = await next_message(plain)  # iterating again goes on with the live messages
        assert (second.data, second.epoch) == ("second life", lost.epoch)
        assert (await next_message(with_callback)).data == "second life"
    assert [f.topic for f in failures] == [called] and failures[0].recovered is False


async def test_a_publish_whose_reply_was_lost_is_sent_again_and_published_once(
    server: ServerProcess,
) -> None:
    topic = unique("orders")
    proxy = CuttableProxy(server.port)
    try:
        async with (
            Client(connect_url(server)) as observer,
            reconnecting(connect_url(proxy)) as publisher,
        ):
            seen = await observer.subscribe(topic)
            proxy.deafen()  # the publish reaches the server, its reply is lost
            publishing = asyncio.create_task(publisher.publish(topic, "once", msg_id="order-17"))
            published = await next_message(seen)
            proxy.cut()  # the publisher's connection dies before any reply reached it
            proxy.restore()
            position = await asyncio.wait_for(publishing, timeout(20))
            assert publisher.close_code == 1006  # it did reconnect to get its answer

            assert (position.offset, published.data) == (published.offset, "once")
            await observer.publish(topic, "next")
            assert (await next_message(seen)).data == "next"  # and not "once" again
            page = await observer.history(topic)
            assert [m.data for m in page.messages] == ["once", "next"]
    finally:
        proxy.close()


async def test_presence_and_join_leave_through_the_client(protocol_server: ServerProcess) -> None:
    topic = unique("room.t")  # presence and join_leave on in protocol_settings.py
    async with Client(connect_url(protocol_server)) as alice:
        room = await alice.subscribe(topic, info={"name": "Alice"})
        async with Client(connect_url(protocol_server)) as bob:
            await bob.subscribe(topic, info={"name": "Bob"})
            joins = [await asyncio.wait_for(anext(room), timeout(10)) for _ in range(2)]
            assert [(e.type, e.entry.info) for e in joins if isinstance(e, PresenceEvent)] == [
                ("join", {"name": "Alice"}),  # its own join first
                ("join", {"name": "Bob"}),
            ]
            entries = await alice.presence(topic)
            assert sorted(e.info["name"] for e in entries) == ["Alice", "Bob"]
        left = await asyncio.wait_for(anext(room), timeout(10))
        assert isinstance(left, PresenceEvent) and left.type == "leave"


async def until_stopped(subscription: Subscription) -> str | int:
    """Read ``subscription`` until it raises; the code it raises with."""
    try:
        while True:
            await asyncio.wait_for(anext(subscription), timeout(10))
    except ClientError as stopped:
        return stopped.code


async def test_a_session_cookie_or_a_token_authenticates_and_a_logout_stops_the_client(
    server: ServerProcess,
) -> None:
    """``_megaphone.*`` topics are for staff: the cookie and the token make the client staff's;
    the logout closes both with 4401, which stops a client with a fixed URL."""
    create_superuser(server, "ops")
    browser = Browser(server)
    await asyncio.to_thread(browser.log_in, "ops")
    token = await asyncio.to_thread(browser.token)
    url = connect_url(server)
    async with Client(url) as anonymous:
        with pytest.raises(ClientError) as refused:
            await anonymous.subscribe("_megaphone.stats")
        assert refused.value.code == "forbidden"
    async with (
        Client(url, session_cookie=browser.cookie("sessionid")) as by_session,
        Client(url, token=token) as by_token,
    ):
        subscriptions = [await c.subscribe("_megaphone.stats") for c in (by_session, by_token)]
        await asyncio.to_thread(browser.log_out)
        assert [await until_stopped(s) for s in subscriptions] == [4401, 4401]
        assert (by_session.state, by_token.state) == ("closed", "closed")
