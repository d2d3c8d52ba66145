"""Tier 3: what a client that floods Megaphone's uvicorn protocol costs it (in-process server).

uvicorn parses a whole read (up to 256 KiB) into events for the application at once: 37,000 of
them for 7-byte frames, a few hundred bytes each. Megaphone's protocol parses 4 KiB at a time and
leaves the rest unparsed, with the socket unread, while the application has events to take.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import uvicorn

from megaphone.server.uvicorn import PARSE_SLICE, WebSocketProtocol, _Inbox
from tests.conftest import free_port, timeout

from .rawws import CLOSE, TEXT, RawClient, frame

COUNT = 100_000


async def test_received_frames_wait_unparsed_while_the_application_has_events_to_take() -> None:
    release = asyncio.Event()
    received: list[str] = []

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()  # websocket.connect
        await send({"type": "websocket.accept"})
        await release.wait()
        while len(received) < COUNT:
            received.append((await receive())["text"])
        await send({"type": "websocket.close", "code": 1000})

    port = free_port()
    config = uvicorn.Config(
        app, port=port, ws="megaphone.server.uvicorn:WebSocketProtocol", lifespan="off"
    )
    server = uvicorn.Server(config)
    serving = asyncio.ensure_future(server.serve())
    client = None
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        client = RawClient(port)
        assert await asyncio.to_thread(client.handshake, "/") == 101
        (protocol,) = server.server_state.connections
        assert isinstance(protocol, WebSocketProtocol)
        inbox = protocol.queue
        assert isinstance(inbox, _Inbox)
        # 700 KiB of small frames: the server reads some, then stops reading this socket.
        flood = b"".join(frame(TEXT, str(i).encode()) for i in range(COUNT))
        sending = asyncio.ensure_future(asyncio.to_thread(client.send, flood))
        deadline = time.monotonic() + timeout(10)
        while not (protocol.read_paused and len(inbox) > 1):
            assert time.monotonic() < deadline, "the server read nothing"
            await asyncio.sleep(0.01)
        assert len(inbox) <= PARSE_SLICE // 6 + 1  # a frame is at least 6 bytes
        release.set()  # the application takes them all: every frame, in order
        await asyncio.wait_for(sending, timeout(10))
        closing = await asyncio.to_thread(client.recv_frame, timeout(10))
        assert closing.opcode == CLOSE
        assert received == [str(i) for i in range(COUNT)]
    finally:
        if client is not None:
            client.close()
        server.should_exit = True
        await asyncio.wait_for(serving, timeout(10))
