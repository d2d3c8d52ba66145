"""A raw WebSocket client over a plain blocking socket, for the hardening tests.

The ``websockets`` client always reads, always answers pings and refuses to send malformed
frames; these tests need a client that does none of that: one that never reads, sends endless
fragments or invalid UTF-8, or stops halfway through a handshake. Frames are built by hand,
masked as RFC 6455 requires of a client (section 5.3).
"""

from __future__ import annotations

import base64
import os
import re
import socket
import struct
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

TEXT, BINARY, CONTINUATION, CLOSE, PING, PONG = 0x1, 0x2, 0x0, 0x8, 0x9, 0xA


def frame(opcode: int, payload: bytes = b"", *, fin: bool = True) -> bytes:
    """One masked client frame."""
    head = bytes([(0x80 if fin else 0) | opcode])
    length = len(payload)
    if length < 126:
        head += bytes([0x80 | length])
    elif length < 1 << 16:
        head += bytes([0x80 | 126]) + struct.pack("!H", length)
    else:
        head += bytes([0x80 | 127]) + struct.pack("!Q", length)
    key = os.urandom(4)
    if not payload:
        return head + key
    mask = (key * (length // 4 + 1))[:length]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(mask, "big")).to_bytes(length, "big")
    return head + key + masked


@dataclass
class Frame:
    fin: bool
    opcode: int
    payload: bytes

    @property
    def close_code(self) -> int | None:
        return struct.unpack("!H", self.payload[:2])[0] if len(self.payload) >= 2 else None


class RawClient:
    """A client socket to ``127.0.0.1:port``; ``rcvbuf`` shrinks its kernel receive buffer."""

    def __init__(self, port: int, *, rcvbuf: int | None = None, connect_timeout: float = 5) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if rcvbuf is not None:  # before connect(), so the TCP window is negotiated with it
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.settimeout(connect_timeout)
        self.sock.connect(("127.0.0.1", port))
        self._buffer = b""

    def __enter__(self) -> RawClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.sock.close()

    def request(self, path: str) -> bytes:
        """The bytes of a WebSocket upgrade request for ``path`` (no Origin: a script)."""
        key = base64.b64encode(os.urandom(16)).decode()
        return (
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        ).encode()

    def handshake(self, path: str, seconds: float = 5) -> int:
        """Send the upgrade request and read the response head; return its status code."""
        self.sock.sendall(self.request(path))
        deadline = time.monotonic() + seconds
        while b"\r\n\r\n" not in self._buffer:
            self._fill(deadline)
        head, self._buffer = self._buffer.split(b"\r\n\r\n", 1)
        match = re.match(rb"HTTP/1\.1 (\d{3})", head)
        assert match, head
        return int(match.group(1))

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, deadline: float) -> None:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError("no data from the server in time")
        self.sock.settimeout(remaining)
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise EOFError("the server closed the connection")
        self._buffer += chunk

    def _read_exact(self, size: int, deadline: float) -> bytes:
        while len(self._buffer) < size:
            self._fill(deadline)
        data, self._buffer = self._buffer[:size], self._buffer[size:]
        return data

    def recv_frame(self, seconds: float = 5) -> Frame:
        """The next frame from the server (server frames are not masked)."""
        deadline = time.monotonic() + seconds
        first, second = self._read_exact(2, deadline)
        length = second & 0x7F
        if length == 126:
            length = struct.unpack("!H", self._read_exact(2, deadline))[0]
        elif length == 127:
            length = struct.unpack("!Q", self._read_exact(8, deadline))[0]
        return Frame(bool(first & 0x80), first & 0x0F, self._read_exact(length, deadline))

    def read_until_close(self, seconds: float = 10) -> tuple[list[Frame], int | None]:
        """Every frame up to the server's close frame: (data frames, close code).

        The close code is None if the connection ended without a close frame."""
        deadline = time.monotonic() + seconds
        frames: list[Frame] = []
        while True:
            try:
                received = self.recv_frame(max(0.0, deadline - time.monotonic()))
            except (EOFError, ConnectionResetError):
                return frames, None
            if received.opcode == CLOSE:
                return frames, received.close_code
            frames.append(received)

    def closed_by_server(self, seconds: float) -> bool:
        """Whether the server ends the TCP connection within ``seconds`` (data is discarded)."""
        deadline = time.monotonic() + seconds
        while True:
            try:
                self._fill(deadline)
            except (EOFError, ConnectionResetError):
                return True
            except TimeoutError:
                return False
            self._buffer = b""


def rss_kib(pid: int) -> int:
    """Resident memory of process ``pid`` in KiB (``VmRSS`` of /proc/<pid>/status)."""
    status = Path(f"/proc/{pid}/status").read_text()
    match = re.search(r"^VmRSS:\s+(\d+) kB$", status, re.MULTILINE)
    assert match, status
    return int(match.group(1))


@contextmanager
def peak_rss(pid: int) -> Iterator[list[int]]:
    """Samples ``pid``'s RSS every 20 ms while the block runs; yields a list holding the peak."""
    peak = [rss_kib(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.02):
            peak[0] = max(peak[0], rss_kib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        yield peak
    finally:
        done.set()
        sampler.join()
