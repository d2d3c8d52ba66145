"""Tier 1: WebSocket framing, and a connection switching between direct writes and its queue."""

from __future__ import annotations

import asyncio

import pytest
from websockets.frames import Frame, Opcode
from websockets.streams import StreamReader

from megaphone.message import Message, raw_frame
from megaphone.transports.connection import Connection
from megaphone.transports.frames import event_frame, frame_writer, framed


def parse(data: bytes) -> Frame:
    """Parse ``data`` with the websockets library's own client-side frame parser."""
    reader = StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    parser = Frame.parse(reader.read_exact, mask=False)
    try:
        while True:
            next(parser)
    except StopIteration as done:
        return done.value


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

    assert frame_writer({"extensions": {"megaphone.write_frame": {"write": write}}}) is write
    assert frame_writer({"extensions": {}}) is None
    assert frame_writer({}) is None


class Socket:
    """A fake server socket: takes direct writes while ``writable``, records ASGI sends."""

    def __init__(self) -> None:
        self.writable = True
        self.wire: list[bytes] = []
        self.sent_via_asgi: list[dict[str, object]] = []

    def write_frame(self, frame: bytes) -> bool:
        if self.writable:
            self.wire.append(frame)
        return self.writable

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
        write_frame=socket.write_frame,
    )


def message(offset: int) -> Message:
    return Message("t", f"m{offset}", offset, "e", 0.0)


async def test_idle_connection_writes_directly_without_queueing() -> None:
    socket = Socket()
    conn = connection(socket)
    conn.start()
    for offset in range(1, 4):
        conn.deliver(message(offset))
    assert socket.wire == [b"\x81\x02m1", b"\x81\x02m2", b"\x81\x02m3"]
    assert socket.sent_via_asgi == [] and len(conn.outbox) == 0
    await conn.close()


async def test_a_paused_socket_queues_and_order_is_kept_when_it_resumes() -> None:
    socket = Socket()
    conn = connection(socket)
    conn.start()
    conn.deliver(message(1))
    socket.writable = False
    conn.deliver(message(2))
    conn.deliver(message(3))
    socket.writable = True  # resumed, but 2 and 3 are still queued: 4 must not overtake them
    conn.deliver(message(4))
    await asyncio.sleep(0.01)
    assert [parse(frame).data.decode() for frame in socket.wire] == ["m1", "m2", "m3", "m4"]
    assert [e["text"] for e in socket.sent_via_asgi] == ["m2", "m3", "m4"]
    conn.deliver(message(5))  # the queue is empty again: direct once more
    assert socket.wire[-1] == b"\x81\x02m5" and len(socket.sent_via_asgi) == 3
    await conn.close()


async def test_frames_delivered_before_start_wait_for_the_writer() -> None:
    socket = Socket()
    socket.writable = False  # the handshake is not complete yet
    conn = connection(socket)
    conn.deliver(message(1))
    socket.writable = True
    conn.deliver(message(2))
    assert socket.wire == []
    conn.start()
    await asyncio.sleep(0.01)
    assert [parse(frame).data.decode() for frame in socket.wire] == ["m1", "m2"]
    await conn.close()


async def test_the_writer_task_exists_only_while_frames_wait() -> None:
    socket = Socket()
    conn = connection(socket)
    tasks = len(asyncio.all_tasks())
    conn.start()
    conn.deliver(message(1))  # straight to the socket: no task
    assert len(asyncio.all_tasks()) == tasks
    socket.writable = False
    conn.deliver(message(2))
    assert len(asyncio.all_tasks()) == tasks + 1
    socket.writable = True
    await asyncio.sleep(0.01)
    assert len(asyncio.all_tasks()) == tasks  # the queue is empty: the writer ended
    assert [parse(frame).data.decode() for frame in socket.wire] == ["m1", "m2"]
    await conn.close()
