"""Tier 3: uvicorn with Megaphone's protocol offers ``megaphone.write_frame``, and it works."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
import websockets

from megaphone.core.frames import WRITE_FRAME_EXTENSION, event_frame
from tests.conftest import free_port, timeout


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    assert scope["type"] == "websocket"
    await receive()  # websocket.connect
    offer = scope["extensions"].get(WRITE_FRAME_EXTENSION, {})
    write, drain = offer.get("write"), offer.get("drain")
    before_accept = write(b"\x81\x01x") if write else None
    await send({"type": "websocket.accept"})
    if write is None:
        await send({"type": "websocket.send", "text": "no extension"})
    else:
        await send(
            {"type": "websocket.send", "text": f"refused before accept: {not before_accept}"}
        )
        await drain()  # an empty buffer: at once
        assert write(event_frame({"type": "websocket.send", "text": "direct text"}))
        assert write(event_frame({"type": "websocket.send", "bytes": b"\x00direct"}))
    await send({"type": "websocket.close", "code": 1000})


async def serve_and_receive(deflate: bool) -> list[str | bytes]:
    port = free_port()
    config = uvicorn.Config(
        app,
        port=port,
        ws="megaphone.server.uvicorn:WebSocketProtocol",
        ws_per_message_deflate=deflate,
        lifespan="off",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    task = asyncio.ensure_future(server.serve())
    try:
        while not server.started:
            await asyncio.sleep(0.01)
        async with websockets.connect(f"ws://127.0.0.1:{port}/") as client:
            return [message async for message in client]
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, timeout(10))


async def test_direct_frames_reach_the_client_after_accept_only() -> None:
    assert await serve_and_receive(deflate=False) == [
        "refused before accept: True",
        "direct text",
        b"\x00direct",
    ]


async def test_no_extension_when_permessage_deflate_is_on() -> None:
    assert await serve_and_receive(deflate=True) == ["no extension"]
