"""Tier 3: the Server-Sent Events endpoints against real servers: ``curl -N`` and a Python SSE
client get what WebSocket clients publish, resume with ``Last-Event-ID`` without gap or
duplicate, get ``event: reset`` for an id whose gap cannot be filled, and a ``retry:`` hint when
the server stops; under ``manage.py serve``, uvicorn, daphne and ``runserver``, and with two
workers over Redis."""

from __future__ import annotations

import asyncio
import base64
import json
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
import websockets

from tests.conftest import ROOT, ServerProcess, free_port, launch, start_asgi_server, timeout
from tests.redis_server import RedisServer
from tests.sse_client import Event, Stream, connect

from .test_redis_scaleout import workers_subscribed

SSE_SETTINGS_ENV = {"DJANGO_SETTINGS_MODULE": "tests.e2e.sse_settings", "PYTHONPATH": str(ROOT)}


def unique() -> str:
    return f"broadcast.sse-{uuid.uuid4().hex[:8]}"


async def publish(server: ServerProcess, topic: str, *payloads: str | bytes) -> None:
    """Send ``payloads`` on the raw WebSocket endpoint and wait until they came back (so the
    backend has them all)."""
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/") as client:
        for payload in payloads:
            await client.send(payload)
        for payload in payloads:
            assert await asyncio.wait_for(client.recv(), timeout(5)) == payload


async def events(stream: Stream, count: int) -> list[Event]:
    received = []
    for _ in range(count):
        event = await stream.next()
        assert event is not None, "the stream ended"
        received.append(event)
    return received


async def opened(server: ServerProcess, topic: str, **headers: str) -> Stream:
    stream = await connect(f"{server.http_url}/sse/broadcast/{topic}/", headers)
    assert stream.status == 200
    assert stream.headers["content-type"] == "text/event-stream"
    # The first line: the position (an id alone, no event) or a reset; read it so the stream is
    # known to be subscribed before the test publishes.
    while stream.last_event_id == "":
        line = await asyncio.wait_for(stream._line(), timeout(5))
        if line is not None and line.startswith("id: "):
            stream.last_event_id = line[4:]
    return stream


async def test_curl_receives_what_a_websocket_client_publishes(server: ServerProcess) -> None:
    topic = unique()
    curl = await asyncio.create_subprocess_exec(
        *("curl", "-sN", f"{server.http_url}/sse/broadcast/{topic}/"),
        stdout=subprocess.PIPE,
    )
    try:
        assert curl.stdout is not None
        first = await asyncio.wait_for(curl.stdout.readline(), timeout(10))
        assert first.startswith(b"id: ")
        epoch = first.decode().split()[1].split(":")[0]
        await publish(server, topic, "hello", "two\nlines", b"\x00\xff", "")
        binary = base64.b64encode(b"\x00\xff").decode()
        expected = (
            f"\nid: {epoch}:1\ndata: hello\n\nid: {epoch}:2\ndata: two\ndata: lines\n\n"
            f"id: {epoch}:3\nevent: binary\ndata: {binary}\n\n"
            f"id: {epoch}:4\ndata: \n\n"
        ).encode()
        received = b""
        while len(received) < len(expected):
            received += await asyncio.wait_for(curl.stdout.read(1024), timeout(5))
        assert received == expected
    finally:
        curl.kill()
        await curl.wait()


async def test_python_client_resumes_with_exactly_the_missed_messages(
    server: ServerProcess,
) -> None:
    topic = unique()
    stream = await opened(server, topic)
    await publish(server, topic, "a", "b")
    assert [e.data for e in await events(stream, 2)] == ["a", "b"]
    last = stream.last_event_id
    await stream.close()
    await publish(server, topic, "c", "d", "e")  # missed while away
    resumed = await connect(f"{server.http_url}/sse/broadcast/{topic}/", {"Last-Event-ID": last})
    missed = await events(resumed, 3)
    assert [e.data for e in missed] == ["c", "d", "e"]
    assert [e.id.split(":")[1] for e in missed] == ["3", "4", "5"]
    await publish(server, topic, "live")
    assert [e.data for e in await events(resumed, 1)] == ["live"]  # no duplicate before it
    await resumed.close()
    # The query parameter does the same (EventSource cannot set headers on its first request).
    by_query = await connect(f"{server.http_url}/sse/broadcast/{topic}/?last_event_id={last}")
    assert [e.data for e in await events(by_query, 4)] == ["c", "d", "e", "live"]
    await by_query.close()


@pytest.mark.parametrize("stale", ["another-epoch:1", "{epoch}:99"])
async def test_an_id_whose_gap_cannot_be_filled_gets_a_reset_first(
    server: ServerProcess, stale: str
) -> None:
    topic = unique()
    await publish(server, topic, "x")
    probe = await opened(server, topic)
    epoch, offset = probe.last_event_id.split(":")
    await probe.close()
    stream = await connect(
        f"{server.http_url}/sse/broadcast/{topic}/",
        {"Last-Event-ID": stale.format(epoch=epoch)},
    )
    reset = await stream.next()
    assert reset is not None and reset.type == "reset"
    assert reset.id == f"{epoch}:{offset}"
    assert json.loads(reset.data) == {"epoch": epoch, "offset": int(offset), "missed": None}
    await publish(server, topic, "after")
    after = await stream.next()
    assert after is not None and (after.data, after.id) == ("after", f"{epoch}:2")
    await stream.close()


@pytest.mark.parametrize("bad", ["nonsense", "abc:", ":3", "abc:-1", "a b:1", "abc:1x"])
async def test_an_invalid_last_event_id_is_a_400_with_the_reason(
    server: ServerProcess, bad: str
) -> None:
    stream = await connect(f"{server.http_url}/sse/broadcast/", {"Last-Event-ID": bad})
    assert stream.status == 400
    assert "invalid Last-Event-ID" in await stream.body()
    await stream.close()
    assert "Traceback" not in server.log()


async def test_foreign_origin_is_refused_and_no_origin_is_accepted(server: ServerProcess) -> None:
    foreign = await connect(f"{server.http_url}/sse/broadcast/", {"Origin": "http://evil.example"})
    assert foreign.status == 403
    await foreign.close()
    own = await connect(
        f"{server.http_url}/sse/broadcast/", {"Origin": f"http://127.0.0.1:{server.port}"}
    )
    assert own.status == 200 and "access-control-allow-origin" not in own.headers
    await own.close()


async def test_heartbeats_keep_an_idle_stream_alive(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(env=SSE_SETTINGS_ENV)
    stream = await opened(server, unique())
    line = await asyncio.wait_for(stream._line(), timeout(5))
    while line == "":
        line = await asyncio.wait_for(stream._line(), timeout(5))
    assert line == ": ping"
    await stream.close()


async def test_sigterm_ends_streams_with_a_retry_hint(server: ServerProcess) -> None:
    streams = [await opened(server, unique()) for _ in range(3)]
    server.process.send_signal(signal.SIGTERM)
    for stream in streams:
        assert await stream.next(10) is None  # the stream ended...
        assert stream.retry is not None and 500 <= stream.retry <= 2500  # ...with a hint
        await stream.close()
    returncode = await asyncio.to_thread(server.process.wait, timeout(15))
    assert returncode == -signal.SIGTERM


@pytest.mark.parametrize("name", ["serve", "uvicorn", "daphne"])
async def test_streams_under_each_asgi_server(tmp_path: object, name: str) -> None:
    server = start_asgi_server(tmp_path, name, env={"PYTHONPATH": str(ROOT)})  # type: ignore[arg-type]
    try:
        await _receives_and_resumes(server)
        stream = await opened(server, unique())
        server.process.send_signal(signal.SIGTERM)  # daphne cancels applications at once
        assert await stream.next(10) is None
        assert stream.retry is not None  # yet the stream got its hint first
        await stream.close()
    finally:
        server.stop(signal.SIGKILL)


async def test_streams_under_runserver(tmp_path: object) -> None:
    port = free_port()
    command = [
        sys.executable,
        str(ROOT / "example" / "manage.py"),
        "runserver",
        f"127.0.0.1:{port}",
    ]
    server = launch(command, tmp_path, port, {"DJANGO_DEBUG": "1"})  # type: ignore[arg-type]
    try:
        await _receives_and_resumes(server)
    finally:
        server.stop(signal.SIGKILL)


async def _receives_and_resumes(server: ServerProcess) -> None:
    topic = unique()
    stream = await opened(server, topic)
    await publish(server, topic, "one")
    assert [e.data for e in await events(stream, 1)] == ["one"]
    last = stream.last_event_id
    await stream.close()
    await publish(server, topic, "two")
    resumed = await connect(f"{server.http_url}/sse/broadcast/{topic}/", {"Last-Event-ID": last})
    assert [e.data for e in await events(resumed, 1)] == ["two"]
    await resumed.close()


async def test_two_workers_over_redis(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    server = server_factory(workers=2, env={**SSE_SETTINGS_ENV, "REDIS_URL": redis_server.url})
    topic = unique()
    # Enough streams that both workers serve some; every one gets every message.
    streams = [await opened(server, topic) for _ in range(8)]
    assert workers_subscribed(redis_server, topic) == 2
    await publish(server, topic, *(f"m{i}" for i in range(20)))
    for stream in streams:
        assert [e.data for e in await events(stream, 20)] == [f"m{i}" for i in range(20)]
    last = streams[0].last_event_id
    for stream in streams:
        await stream.close()
    await publish(server, topic, "missed")
    # Whichever worker takes the reconnect, history in Redis fills the gap.
    for _ in range(4):
        resumed = await connect(
            f"{server.http_url}/sse/broadcast/{topic}/", {"Last-Event-ID": last}
        )
        assert [e.data for e in await events(resumed, 1)] == ["missed"]
        await resumed.close()
