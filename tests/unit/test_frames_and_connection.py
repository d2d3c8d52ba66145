"""Tier 1: WebSocket framing, and a connection switching between direct writes and its queue."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from megaphone.core.frames import OfferedWriter, event_frame, frame_writer, framed
from megaphone.core.message import Message, raw_frame
from megaphone.server.connection import Connection
from tests.conftest import loop_turns


def parse_all(data: bytes) -> list[Frame]:
    """Parse ``data`` with the websockets library's own client-side frame parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parsed = []
    while reader.buffer:
        parser = Frame.parse(reader.read_exact, mask=False)
        try:
            while True:
                next(parser)
        except StopIteration as done:
            parsed.append(done.value)
    return parsed


def parse(data: bytes) -> Frame:
    (frame,) = parse_all(data)
    return frame


@pytest.mark.parametrize("length", [0, 1, 125, 126, 127, 65535, 65536, 70000])
def test_frames_parse_back_as_sent(length: int) -> None:
    text = "é" * (length // 2) + "a" * (length % 2)
    frame = parse(event_frame({"type": "websocket.send", "text": text}))
    assert frame.opcode is Opcode.TEXT and frame.fin and frame.data.decode() == text
    data = bytes(range(256)) * (length // 256) + bytes(length % 256)
    frame = parse(event_frame({"type": "websocket.send", "bytes": data}))
    assert frame.opcode is Opcode.BINARY and frame.fin and frame.data == data


def test_framed_encoder_is_cached_per_encoder_and_per_message() -> None:
    assert framed(raw_frame) is framed(raw_frame)
    message = Message("t", "hi", 1, "e", 0.0)
    assert message.encoded(framed(raw_frame)) is message.encoded(framed(raw_frame))
    assert message.encoded(framed(raw_frame)) == b"\x81\x02hi"


def test_frame_writer_is_found_only_when_offered() -> None:
    def write(frame: bytes) -> bool:
        return True

    async def drain() -> None:
        pass

    offer = {"megaphone.write_frame": {"write": write, "drain": drain}}
    assert frame_writer({"extensions": offer}) == OfferedWriter(write, drain)
    assert frame_writer({"extensions": {}}) is None
    assert frame_writer({}) is None


class Socket:
    """A fake server socket: takes direct writes while ``writable`` (and not ``closing``),
    records ASGI sends."""

    def __init__(self) -> None:
        self._writable = asyncio.Event()
        self._writable.set()
        self.closing = False
        self.wire: list[bytes] = []
        self.sent_via_asgi: list[dict[str, object]] = []

    @property
    def writable(self) -> bool:
        return self._writable.is_set()

    @writable.setter
    def writable(self, value: bool) -> None:
        if value:
            self._writable.set()
        else:
            self._writable.clear()

    def write_frame(self, frame: bytes) -> bool:
        if self.writable and not self.closing:
            self.wire.append(frame)
            return True
        return False

    async def drain(self) -> None:
        await self._writable.wait()

    async def send(self, event: dict[str, object]) -> None:
        self.wire.append(event_frame(event))  # type: ignore[arg-type]
        self.sent_via_asgi.append(event)


def connection(socket: Socket) -> Connection:
    return Connection(
        socket.send,
        raw_frame,
        lambda: None,
        max_messages=100,
        max_bytes=10_000,
        frame_writer=OfferedWriter(socket.write_frame, socket.drain),
    )


def message(offset: int) -> Message:
    return Message("t", f"m{offset}", offset, "e", 0.0)


def frames(wire: list[bytes]) -> list[str]:
    """The text of every frame written, whatever the writes they were cut into."""
    return [frame.data.decode() for frame in parse_all(b"".join(wire))]


async def test_frames_of_one_loop_turn_go_out_in_one_write_when_it_ends() -> None:
    socket = Socket()
    conn = connection(socket)
    conn.start()
    for offset in range(1, 4):
        conn.deliver(message(offset))
    assert socket.wire == []  # held until this turn of the loop ends
    await asyncio.sleep(0)
    assert socket.wire == [b"\x81\x02m1\x81\x02m2\x81\x02m3"]
    conn.deliver(message(4))
    await asyncio.sleep(0)
    assert socket.wire[1:] == [b"\x81\x02m4"]
    assert socket.sent_via_asgi == [] and len(conn.outbox) == 0
    await conn.close()


async def test_a_reply_queued_behind_held_frames_does_not_overtake_them() -> None:
    socket = Socket()
    conn = connection(socket)
    conn.start()
    conn.deliver(message(1))
    conn.deliver(message(2))
    conn.send_text("reply")
    conn.deliver(message(3))
    await conn.flush()
    assert frames(socket.wire) == ["m1", "m2", "reply", "m3"]
    await conn.close()


async def test_a_paused_socket_queues_and_order_is_kept_when_it_resumes() -> None:
    socket = Socket()
    conn = connection(socket)
    conn.start()
    conn.deliver(message(1))
    await asyncio.sleep(0)
    socket.writable = False
    conn.deliver(message(2))
    conn.deliver(message(3))
    await asyncio.sleep(0)  # the socket could not take them: queued
    conn.deliver(message(4))  # behind them in the queue
    await loop_turns()
    assert socket.wire == [b"\x81\x02m1"]  # the writer waits for the socket to drain
    socket.writable = True
    conn.deliver(message(5))  # resumed, but 2 to 4 are still queued: 5 must not overtake them
    await conn.flush()
    assert frames(socket.wire) == ["m1", "m2", "m3", "m4", "m5"]
    assert len(socket.wire) == 2 and socket.sent_via_asgi == []  # the queue went in one write
    conn.deliver(message(6))  # the queue is empty again: direct once more
    await asyncio.sleep(0)
    assert socket.wire[-1] == b"\x81\x02m6"
    await conn.close()


async def test_a_closing_socket_gets_asgi_events_through_asgi_and_no_direct_frames() -> None:
    socket = Socket()
    conn = connection(socket)
    conn.start()
    socket.closing = True  # the server is closing the socket: direct writes are refused
    conn.deliver(message(1))
    conn.send_text("reply")
    await conn.flush()
    assert socket.wire == [b"\x81\x05reply"]  # ASGI decides what a closing socket takes
    assert [e["text"] for e in socket.sent_via_asgi] == ["reply"]
    await conn.close()


async def test_frames_delivered_before_start_wait_for_the_writer() -> None:
    socket = Socket()
    socket.writable = False  # the handshake is not complete yet
    conn = connection(socket)
    conn.deliver(message(1))
    await asyncio.sleep(0)
    socket.writable = True
    conn.deliver(message(2))
    await asyncio.sleep(0)
    assert socket.wire == []
    conn.start()
    await conn.flush()
    assert frames(socket.wire) == ["m1", "m2"]
    await conn.close()


async def test_the_writer_task_exists_only_while_frames_wait() -> None:
    socket = Socket()
    conn = connection(socket)
    tasks = len(asyncio.all_tasks())
    conn.start()
    conn.deliver(message(1))  # straight to the socket when the turn ends: no task
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == tasks
    socket.writable = False
    conn.deliver(message(2))
    await asyncio.sleep(0)
    assert len(asyncio.all_tasks()) == tasks + 1
    socket.writable = True
    await conn.flush()
    assert len(asyncio.all_tasks()) == tasks  # the queue is empty: the writer ended
    assert frames(socket.wire) == ["m1", "m2"]
    await conn.close()


async def test_flush_hands_every_delivered_frame_to_the_socket_before_a_close() -> None:
    socket = Socket()
    conn = connection(socket)
    conn.start()
    conn.deliver(message(1))  # held for this turn
    conn.send_text("reply")  # queued behind it
    await conn.flush()
    assert frames(socket.wire) == ["m1", "reply"]
    socket.writable = False  # a client that stopped reading: flush waits, the caller bounds it
    conn.deliver(message(2))
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(conn.flush(), 0.05)
    await conn.close()  # drops it, and the writer, however stuck
    assert frames(socket.wire) == ["m1", "reply"] and conn.outbox.closed
