"""Tier 1: the light queue and flag Megaphone's uvicorn protocol uses instead of asyncio's, and its
sans-I/O WebSocket core (bytes in, events and bytes out)."""

from __future__ import annotations

import asyncio
import struct

import pytest
from websockets.frames import Close, Frame, Opcode
from websockets.protocol import State

from megaphone.server.uvicorn import Flag, _Inbox, _ServerProtocol
from tests.e2e.rawws import CLOSE, CONTINUATION, TEXT, frame


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
    flag = Flag()
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


@pytest.mark.parametrize(
    ("close", "answer", "events"),
    [
        # Echoed, as a close frame anywhere else; the last fragment is never read.
        (struct.pack("!H", 1000), Close(1000, ""), [Opcode.TEXT, Opcode.CLOSE]),
        (struct.pack("!H", 4000) + b"bye", Close(4000, "bye"), [Opcode.TEXT, Opcode.CLOSE]),
        # A close frame that is itself invalid still fails the connection.
        (struct.pack("!H", 999), Close(1002, "invalid status code"), [Opcode.TEXT]),
    ],
    ids=["normal", "own-code", "invalid-code"],
)
def test_a_close_between_fragments_is_answered_as_any_close(
    close: bytes, answer: Close, events: list[Opcode]
) -> None:
    protocol = _ServerProtocol(state=State.OPEN)
    protocol.receive_data(
        frame(TEXT, b"fragment1", fin=False)
        + frame(CLOSE, close)
        + frame(CONTINUATION, b"fragment2")
    )
    assert [event.opcode for event in protocol.events_received()] == events
    assert protocol.close_sent == answer
    written = protocol.data_to_send()[0]
    assert written == Frame(Opcode.CLOSE, answer.serialize()).serialize(mask=False)


async def test_a_close_after_the_server_closed_is_a_no_op() -> None:
    """The server closed (a frame over the size limit, say) while the application was deciding
    a close of its own: uvicorn raises RuntimeError on that second close; ours sends nothing."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from megaphone.server.uvicorn import WebSocketProtocol

    config = Config(app=None, ws=WebSocketProtocol)
    protocol = WebSocketProtocol(config=config, server_state=ServerState(), app_state={})
    written: list[bytes] = []
    protocol.transport = type("Transport", (), {"write": written.append})()
    protocol.handshake_complete = True
    protocol.close_sent = True  # as after uvicorn's own 1009
    await protocol.send({"type": "websocket.close", "code": 4429})
    assert written == []


async def test_the_parser_is_uvicorns_own_made_ours() -> None:
    """uvicorn's parser is not built twice: it becomes a _ServerProtocol, and keeps what uvicorn
    configured (the size limit, the extensions, the logger)."""
    from uvicorn.config import Config
    from uvicorn.server import ServerState

    from megaphone.server.uvicorn import WebSocketProtocol

    config = Config(app=None, ws=WebSocketProtocol, ws_max_size=12345, ws_per_message_deflate=True)
    config.load()
    protocol = WebSocketProtocol(config=config, server_state=ServerState(), app_state={})
    assert type(protocol.conn) is _ServerProtocol
    assert protocol.conn.max_message_size == 12345
    assert protocol.conn.available_extensions
    assert protocol.conn.logger.name == "uvicorn.error"  # type: ignore[union-attr]
