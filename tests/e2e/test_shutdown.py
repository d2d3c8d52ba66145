"""Tier 3: a server stopped with SIGTERM tells its clients 1012 (service restart) and exits."""

from __future__ import annotations

import asyncio
import signal

import pytest
import websockets
from websockets.exceptions import ConnectionClosed

from tests.conftest import ServerProcess, timeout


async def test_sigterm_closes_every_client_with_1012(server: ServerProcess) -> None:
    url = f"{server.ws_url}/ws/broadcast/shutdown/"
    clients = [await websockets.connect(url) for _ in range(5)]
    await clients[0].send("before")
    for client in clients:
        assert await asyncio.wait_for(client.recv(), timeout(5)) == "before"

    server.process.send_signal(signal.SIGTERM)
    for client in clients:
        with pytest.raises(ConnectionClosed) as closed:
            await asyncio.wait_for(client.recv(), timeout(10))
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1012
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells why.
    returncode = await asyncio.to_thread(server.process.wait, timeout(15))
    assert returncode == -signal.SIGTERM
    assert "Finished server process" in server.log()
