"""Tier 2: WebSocket text that is not valid Unicode, as a lenient ASGI server could hand it over.

uvicorn decodes text frames as strict UTF-8 and closes with 1007 before the application sees
them; an ASGI server (or a test communicator) may instead pass a ``str`` holding a lone surrogate.
Both endpoints then close that client with 1007 themselves, and nothing of it reaches the others.
"""

from __future__ import annotations

import pytest
from channels.testing import WebsocketCommunicator

from example.asgi import application
from megaphone.testing import unique
from tests.conftest import timeout


async def connect(path: str) -> WebsocketCommunicator:
    communicator = WebsocketCommunicator(application, path)
    connected, code = await communicator.connect(timeout=timeout(5))
    assert connected, code
    return communicator


@pytest.mark.parametrize("text", ["x\ud800y", "\udc00", "a\udc00\ud800b"])
async def test_raw_text_holding_a_lone_surrogate_closes_1007_and_reaches_no_one(
    text: str,
) -> None:
    topic = unique("uni")
    sender, other = (
        await connect(f"/ws/broadcast/{topic}/"),
        await connect(f"/ws/broadcast/{topic}/"),
    )
    await sender.send_to(text_data=text)
    assert await sender.receive_output(timeout(5)) == {"type": "websocket.close", "code": 1007}
    assert await other.receive_nothing(timeout=0.2)
    await other.send_to(text_data="still served")
    assert await other.receive_from(timeout(5)) == "still served"
    await sender.disconnect()
    await other.disconnect()


async def test_protocol_text_holding_a_lone_surrogate_closes_1007() -> None:
    client = await connect("/ws/connect/")
    assert '"connected"' in await client.receive_from(timeout(5))
    await client.send_to(text_data='{"op":"ping","id":"\ud800"}')
    assert await client.receive_output(timeout(5)) == {"type": "websocket.close", "code": 1007}
    await client.disconnect()
