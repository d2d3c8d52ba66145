"""Tier 2: megaphone.server.bodylimit.RequestBodyLimit in front of an ASGI application: a body over
the
limit never reaches it (413 from Content-Length, or a disconnect where a stream crosses it)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from django.test import override_settings

from megaphone.server.bodylimit import RequestBodyLimit

LIMIT = 1000


class Recorder:
    """An ASGI application that reads the whole body, then answers 200 with its size."""

    def __init__(self) -> None:
        self.called = False
        self.events: list[dict[str, Any]] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.called = True
        size = 0
        while True:
            event = await receive()
            self.events.append(event)
            if event["type"] == "http.disconnect":
                return
            size += len(event.get("body", b""))
            if not event.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(size).encode()})


async def run(
    chunks: list[bytes], content_length: int | None = None
) -> tuple[Recorder, list[dict[str, Any]], int]:
    """Send ``chunks`` through the guard; (the application, what went out, events read)."""
    app = Recorder()
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    scope = {"type": "http", "method": "POST", "path": "/upload", "headers": headers}
    incoming = [
        {"type": "http.request", "body": chunk, "more_body": index < len(chunks) - 1}
        for index, chunk in enumerate(chunks)
    ]
    read = 0

    async def receive() -> dict[str, Any]:
        nonlocal read
        read += 1
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await RequestBodyLimit(app)(scope, receive, send)
    return app, sent, read


def assert_413(sent: list[dict[str, Any]]) -> None:
    assert [m["type"] for m in sent] == ["http.response.start", "http.response.body"]
    assert sent[0]["status"] == 413
    assert (b"connection", b"close") in sent[0]["headers"]
    assert json.loads(sent[1]["body"])["error"]["code"] == "body_too_large"


@override_settings(MEGAPHONE={"MAX_REQUEST_BODY": LIMIT})
async def test_a_content_length_over_the_limit_is_refused_unread() -> None:
    app, sent, read = await run([b"x" * 10], content_length=LIMIT + 1)
    assert not app.called and read == 0
    assert_413(sent)


@override_settings(MEGAPHONE={"MAX_REQUEST_BODY": LIMIT})
async def test_a_stream_is_cut_at_the_chunk_that_crosses_the_limit() -> None:
    app, sent, read = await run([b"x" * 600, b"x" * 600, b"x" * 600])
    assert read == 2  # the third chunk is never read
    assert [e["type"] for e in app.events] == ["http.request", "http.disconnect"]
    assert_413(sent)  # and nothing the application might send after it


@pytest.mark.parametrize(
    ("settings", "chunks"),
    [
        ({"MAX_REQUEST_BODY": LIMIT}, [b"x" * 500, b"x" * 500]),  # exactly the limit
        ({"MAX_REQUEST_BODY": None}, [b"x" * 5000]),  # no limit
    ],
)
async def test_bodies_within_the_limit_reach_the_application(
    settings: dict[str, object], chunks: list[bytes]
) -> None:
    with override_settings(MEGAPHONE=settings):
        _, sent, _ = await run(chunks, content_length=sum(map(len, chunks)))
    assert sent[0]["status"] == 200
    assert sent[1]["body"] == str(sum(map(len, chunks))).encode()
