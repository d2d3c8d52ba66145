"""Tier 3: the JSON protocol over HTTP (``/sse/connect/``) against real servers: a POST that
reaches another server than the one holding the stream acts on that session (through Redis), a
POST can never act on someone else's session (forged id, another user's id), a foreign Origin is
refused, and the size and rate limits answer with their documented status and close code."""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections.abc import Callable
from urllib.error import HTTPError
from urllib.request import Request, urlopen

from tests.conftest import ROOT, ServerProcess, create_superuser, timeout
from tests.redis_server import RedisServer
from tests.sse_client import Stream, connect

from .sessions import Browser
from .test_sse import SSE_SETTINGS_ENV


def post(server: ServerProcess, session: str, body: bytes | str, **headers: str) -> int:
    """POST ``body`` to ``session`` (``<id>`` or ``<id>?<query>``) on ``server`` (a new
    connection each time); the status."""
    data = body.encode() if isinstance(body, str) else body
    session_id, _, query = session.partition("?")
    request = Request(
        f"{server.http_url}/sse/connect/{session_id}/{'?' if query else ''}{query}",
        data=data,
        headers={"Content-Type": "application/json", **headers},
        method="POST",
    )
    try:
        with urlopen(request, timeout=timeout(10)) as answer:
            return int(answer.status)
    except HTTPError as error:
        return error.code


async def apost(server: ServerProcess, session: str, frame: object, **headers: str) -> int:
    body = frame if isinstance(frame, (str, bytes)) else json.dumps(frame)
    return await asyncio.to_thread(post, server, session, body, **headers)


async def open_session(server: ServerProcess, query: str = "") -> tuple[Stream, str]:
    """Open a stream; its session id, once the ``connected`` frame came."""
    stream = await connect(f"{server.http_url}/sse/connect/{query}", {})
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream"
    first = await asyncio.wait_for(stream.next(), timeout(5))
    assert first is not None and first.type == "session"
    hello = await frame(stream)
    assert hello["type"] == "connected"
    return stream, first.data


async def frame(stream: Stream) -> dict[str, object]:
    event = await asyncio.wait_for(stream.next(), timeout(5))
    assert event is not None, "the stream ended"
    assert event.type == "message", event
    decoded: dict[str, object] = json.loads(event.data)
    return decoded


async def test_a_post_to_another_server_acts_on_the_session(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    env = {**SSE_SETTINGS_ENV, "REDIS_URL": redis_server.url}
    holder, other = server_factory(env=env), server_factory(env=env)
    topic = f"chat.http-{uuid.uuid4().hex[:8]}"
    stream, session = await open_session(holder)
    # Both servers in turn: each POST is handled in order by the session on `holder`.
    for i, server in enumerate([other, holder, other]):
        assert await apost(server, session, {"op": "subscribe", "topic": topic, "id": i}) == 202
        reply = await frame(stream)
        if i == 0:
            assert reply["type"] == "reply" and reply["id"] == 0
        else:
            assert reply == {
                "type": "error",
                "id": i,
                "code": "already_subscribed",
                "message": "already subscribed",
            }
    sent = {"op": "publish", "topic": topic, "data": {"n": 1}, "id": 9}
    assert await apost(other, session, sent) == 202
    got = [await frame(stream), await frame(stream)]
    assert {f["type"] for f in got} == {"reply", "message"}
    message = next(f for f in got if f["type"] == "message")
    assert message["data"] == {"n": 1} and message["offset"] == 1
    # A stream lost: a new session resubscribes from its position and gets what it missed.
    await stream.close()
    writer, writer_session = await open_session(other)
    await apost(other, writer_session, {"op": "publish", "topic": topic, "data": "missed", "id": 1})
    assert (await frame(writer))["type"] == "reply"
    resumed, session = await open_session(other)
    since = {"offset": 1, "epoch": message["epoch"]}
    subscribe = {"op": "subscribe", "topic": topic, "since": since, "id": 1}
    assert await apost(holder, session, subscribe) == 202
    reply = await frame(resumed)
    assert reply["result"]["recovered"] is True  # type: ignore[index]
    missed = await frame(resumed)
    assert (missed["data"], missed["offset"]) == ("missed", 2)
    for s in (writer, resumed):
        await s.close()


async def test_a_post_never_acts_on_someone_elses_session(server: ServerProcess) -> None:
    create_superuser(server, "alice")
    create_superuser(server, "bob")
    alice, bob = Browser(server), Browser(server)
    alice.log_in("alice")
    bob.log_in("bob")
    stream, session = await open_session(server, f"?token={alice.token()}")
    ping = {"op": "ping", "id": 1}
    alice_cookie = f"sessionid={alice.cookie('sessionid')}"
    nonce, mac = session.split(".")
    forged = [
        f"{nonce}.{'0' * 32}",  # a made-up MAC
        f"{nonce[:-1]}{'A' if nonce[-1] != 'A' else 'B'}.{mac}",  # another nonce, same MAC
        "../../admin",
        "x" * 200,
    ]
    for hostile in forged:
        status = await apost(
            server, hostile, ping, **{"Cookie": f"sessionid={alice.cookie('sessionid')}"}
        )
        assert status in (403, 404), hostile
    # Bob, logged in, knows Alice's session id: still not his.
    assert await apost(server, f"{session}?token={bob.token()}", ping) == 403
    assert await apost(server, session, ping, Cookie=f"sessionid={bob.cookie('sessionid')}") == 403
    # Anonymous with the id: the session is Alice's, bound to her.
    assert await apost(server, session, ping) == 403
    # Alice herself, by token or by her session cookie.
    assert await apost(server, f"{session}?token={alice.token()}", ping) == 202
    assert (await frame(stream)) == {"type": "pong", "id": 1}
    assert await apost(server, session, {"op": "ping", "id": 2}, Cookie=alice_cookie) == 202
    assert (await frame(stream)) == {"type": "pong", "id": 2}
    await stream.close()


async def test_a_foreign_origin_cannot_post(server: ServerProcess) -> None:
    """CSRF: a page on another site cannot read the stream (so never learns the id), and its
    POST is refused by the Origin check before anything else."""
    stream, session = await open_session(server)
    status = await apost(server, session, {"op": "ping", "id": 1}, Origin="http://evil.example")
    assert status == 403
    assert await apost(server, session, {"op": "ping", "id": 2}, Origin=server.http_url) == 202
    assert (await frame(stream)) == {"type": "pong", "id": 2}
    await stream.close()


async def test_limits(server: ServerProcess) -> None:
    stream, session = await open_session(server)
    # Not a frame: an error frame on the stream, as over a WebSocket.
    assert await apost(server, session, "not json") == 202
    assert (await frame(stream))["code"] == "bad_request"
    big = json.dumps({"op": "publish", "topic": "chat.x", "data": "x" * 70_000, "id": 3})
    assert await apost(server, session, big) == 413
    end = await asyncio.wait_for(stream.next(), timeout(5))
    assert end is not None and end.type == "close" and json.loads(end.data) == {"code": 1009}
    assert await asyncio.wait_for(stream.next(), timeout(5)) is None  # the response ends
    await stream.close()


async def test_sigterm_ends_the_stream_with_a_retry_hint_and_1012(server: ServerProcess) -> None:
    stream, _ = await open_session(server)
    server.process.send_signal(signal.SIGTERM)
    end = await asyncio.wait_for(stream.next(), timeout(10))
    assert end is not None and end.type == "close" and json.loads(end.data) == {"code": 1012}
    assert stream.retry is not None and 500 <= stream.retry <= 2500
    assert await asyncio.wait_for(stream.next(), timeout(5)) is None
    await stream.close()
    assert await asyncio.to_thread(server.process.wait, timeout(15)) == -signal.SIGTERM


async def test_a_session_counts_in_the_metrics(server: ServerProcess) -> None:
    stream, _ = await open_session(server)
    with urlopen(f"{server.http_url}/metrics", timeout=timeout(10)) as answer:
        text = answer.read().decode()
    assert "megaphone_http_sessions 1.0" in text
    await stream.close()


async def test_posts_over_the_rate_get_429(server_factory: Callable[..., ServerProcess]) -> None:
    env = {"DJANGO_SETTINGS_MODULE": "tests.e2e.http_session_settings", "PYTHONPATH": str(ROOT)}
    server = server_factory(env=env)
    stream, session = await open_session(server)
    # A burst of PUBLISH_BURST + SUBSCRIBE_BURST (6) POSTs per session and worker, then 429.
    statuses = [await apost(server, session, {"op": "ping", "id": i}) for i in range(10)]
    assert statuses[:6] == [202] * 6
    assert 429 in statuses[6:]
    pongs = [await frame(stream) for _ in range(statuses.count(202))]
    assert all(p["type"] == "pong" for p in pongs)
    # Someone else's session is refused before any rate is spent on it.
    assert await apost(server, session.replace(".", ".0", 1)[:-1], {"op": "ping"}) == 403
    await stream.close()


async def test_logout_ends_the_users_streams_with_4401(server: ServerProcess) -> None:
    create_superuser(server, "carol")
    carol = Browser(server)
    carol.log_in("carol")
    stream = await connect(
        f"{server.http_url}/sse/connect/", {"Cookie": f"sessionid={carol.cookie('sessionid')}"}
    )
    first = await asyncio.wait_for(stream.next(), timeout(5))
    assert first is not None and first.type == "session"
    assert (await frame(stream))["type"] == "connected"
    await asyncio.to_thread(carol.log_out)
    end = await asyncio.wait_for(stream.next(), timeout(10))
    assert end is not None and end.type == "close" and json.loads(end.data) == {"code": 4401}
    await stream.close()
