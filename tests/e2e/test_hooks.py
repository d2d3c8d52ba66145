"""Tier 3: the client_publish signal (megaphone.server.hooks) on a real ``manage.py serve``: a
receiver refuses a message with its own error code, which the protocol client gets (the raw client
is closed with 4403), or replaces it; topics it does not touch are unchanged."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import ROOT, ServerProcess, timeout
from tests.e2e.test_protocol import Client

pytestmark = pytest.mark.e2e

ENV = {"DJANGO_SETTINGS_MODULE": "tests.e2e.django_settings", "PYTHONPATH": str(ROOT)}


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    return server_factory(env=ENV)


async def test_a_receiver_rejects_with_its_code_or_transforms(server: ServerProcess) -> None:
    topic = f"moderated.{uuid.uuid4().hex[:8]}"
    client = Client(await websockets.connect(f"{server.ws_url}/ws/connect/"))
    client.hello = await client.recv()
    try:
        await client.result(op="subscribe", topic=topic)
        request_id = await client.send(op="publish", topic=topic, data="buy spam now")
        error = await client.recv()
        assert error == {
            "type": "error",
            "id": request_id,
            "code": "spam",
            "message": "no spam here",
        }, error
        for sent, published in (("hello", "HELLO"), ({"n": 1}, {"n": 1, "checked": True})):
            await client.send(op="publish", topic=topic, data=sent)
            frames = [await client.recv(), await client.recv()]  # reply and message, any order
            [message] = [f for f in frames if f["type"] == "message"]
            assert message["data"] == published, frames
        history = await client.result(op="history", topic=topic)
        assert [m["data"] for m in history["messages"]] == ["HELLO", {"n": 1, "checked": True}]
    finally:
        await client.close()


async def test_the_raw_endpoint_goes_through_the_same_hook(server: ServerProcess) -> None:
    url = f"{server.ws_url}/ws/broadcast/moderated.{uuid.uuid4().hex[:8]}/"
    async with websockets.connect(url) as raw:
        await raw.send("quiet")
        assert await raw.recv(timeout(5)) == "QUIET"
        await raw.send("spam")
        with pytest.raises(ConnectionClosed) as closed:
            await raw.recv(timeout(5))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4403
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/plain/") as untouched:
        await untouched.send("spam is fine here")
        assert await untouched.recv(timeout(5)) == "spam is fine here"
