"""Tier 1: the light queue and flag Megaphone's uvicorn protocol uses instead of asyncio's."""

from __future__ import annotations

import asyncio

import pytest

from megaphone.transports.uvicorn import _Flag, _Inbox


async def test_the_inbox_hands_out_events_in_order_and_waits_when_empty() -> None:
    inbox = _Inbox()
    assert inbox.empty()
    for i in range(10_000):  # one chunk of tiny frames: taking them stays linear
        inbox.put_nowait(i)
    assert [await inbox.get() for _ in range(10_000)] == list(range(10_000))
    assert inbox.empty()
    waiting = asyncio.ensure_future(inbox.get())
    await asyncio.sleep(0)
    assert not waiting.done()
    inbox.put_nowait("late")
    assert await waiting == "late" and inbox.empty()


async def test_a_cancelled_get_leaves_the_inbox_usable() -> None:
    inbox = _Inbox()
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(inbox.get(), 0.01)
    inbox.put_nowait("next")
    assert await inbox.get() == "next"


async def test_the_flag_wakes_every_waiter_when_set_and_not_before() -> None:
    flag = _Flag()
    assert not flag.is_set()
    waiters = [asyncio.ensure_future(flag.wait()) for _ in range(3)]
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(flag.wait(), 0.01)  # a cancelled wait leaves the others alone
    assert not any(w.done() for w in waiters)
    flag.set()
    assert await asyncio.gather(*waiters) == [True, True, True]
    assert flag.is_set() and await flag.wait()
    flag.clear()
    assert not flag.is_set()


async def test_a_close_after_the_server_closed_is_a_no_op() -> None:
    """The server closed (a frame over the size limit, say) while the application was deciding
    a close of its own: uvicorn raises RuntimeError on that second close; ours sends nothing."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from megaphone.transports.uvicorn import WebSocketProtocol

    config = Config(app=None, ws=WebSocketProtocol)
    protocol = WebSocketProtocol(config=config, server_state=ServerState(), app_state={})
    written: list[bytes] = []
    protocol.transport = type("Transport", (), {"write": written.append})()
    protocol.handshake_complete = True
    protocol.close_sent = True  # as after uvicorn's own 1009
    await protocol.send({"type": "websocket.close", "code": 4429})
    assert written == []
