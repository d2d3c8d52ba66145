"""Class 10: RFC 6455 conformance under ``manage.py serve`` (the whole of it: ``make autobahn``).

A close frame may come between the fragments of a message (RFC 6455 5.4: control frames may be
injected in the middle of a fragmented message). The server must answer it as any close frame,
by echoing it (5.5.1), and the unfinished message must never reach anyone. ``websockets`` alone
fails such a connection with 1002 ("incomplete fragmented message"), a protocol error the client
did not make: Autobahn|Testsuite case 7.1.5. A close frame that is itself invalid still fails the
connection, with the code Autobahn expects for it.
"""

from __future__ import annotations

import asyncio
import struct

import websockets

from megaphone.testing import unique
from tests.conftest import ServerProcess, timeout
from tests.e2e.rawws import BINARY, CLOSE, CONTINUATION, TEXT, Frame, RawClient, frame

from .conftest import Start


def close_payload(code: int, reason: bytes = b"") -> bytes:
    return struct.pack("!H", code) + reason


def close_after_fragment(
    server: ServerProcess, path: str, opcode: int, close: bytes
) -> tuple[list[Frame], int | None]:
    """A raw client sends the first fragment of a message, a close frame with payload ``close``,
    then the last fragment; returns what the server answered: (data frames, close code)."""
    with RawClient(server.port) as client:
        assert client.handshake(path) == 101
        client.send(frame(opcode, b"fragment1", fin=False))
        client.send(frame(CLOSE, close))
        client.send(frame(CONTINUATION, b"fragment2"))
        return client.read_until_close(timeout(10))


async def test_a_close_after_a_fragment_is_echoed_and_the_fragment_is_never_delivered(
    attacked: Start,
) -> None:
    server = attacked()
    path = f"/ws/broadcast/{unique('fragments')}/"
    async with websockets.connect(server.ws_url + path) as watcher:
        answer = await asyncio.to_thread(
            close_after_fragment, server, path, TEXT, close_payload(1000)
        )
        assert answer == ([], 1000)  # was ([], 1002): "incomplete fragmented message"

        # The unfinished message reached no one: the watcher's next message is the marker.
        async with websockets.connect(server.ws_url + path) as publisher:
            await publisher.send("marker")
            assert await asyncio.wait_for(watcher.recv(), timeout(5)) == "marker"
    assert "Traceback" not in server.log()


async def test_every_close_between_fragments_gets_the_answer_it_gets_elsewhere(
    attacked: Start,
) -> None:
    server = attacked()
    path = f"/ws/broadcast/{unique('fragments')}/"
    cases = [
        # (first fragment's opcode, close payload, expected close code; None: an empty close)
        (BINARY, close_payload(1000), 1000),  # binary messages too
        (TEXT, close_payload(4000, b"bye"), 4000),  # the client's own code is echoed
        (TEXT, b"", None),  # an empty close is echoed empty
        (TEXT, close_payload(999), 1002),  # an invalid code is still a protocol error
        (TEXT, b"\x03", 1002),  # so is a 1-byte close payload
        (TEXT, close_payload(1000, b"\xce\xba\xe1\xbd"), 1007),  # a reason that is not UTF-8
    ]
    for opcode, close, expected in cases:
        frames, code = await asyncio.to_thread(close_after_fragment, server, path, opcode, close)
        assert (frames, code) == ([], expected), close
    assert "Traceback" not in server.log()
