"""Class 8, bodies refused before they are read: a request whose ``Content-Length`` is over
``MAX_REQUEST_BODY`` gets 413 from its headers alone, and a streamed (chunked) body is cut at the
limit with 413, on every HTTP path; the server reads no more than the limit (and its read-ahead)
and writes nothing to disk (its ``TMPDIR`` stays empty, and it writes no more than a log line)."""

from __future__ import annotations

import json
import re
import socket
import threading
from pathlib import Path

import pytest

from tests.conftest import ServerProcess, timeout

from .conftest import Start

#: MAX_REQUEST_BODY's default: 2.5 MiB.
LIMIT = 2621440
#: What the server may read or write beyond the limit: the socket read-ahead, log lines.
SLACK = 1024 * 1024
GIB = 1 << 30


def io_counters(server: ServerProcess) -> tuple[int, int]:
    """(bytes read, bytes written) by the server process so far, files and sockets alike."""
    text = Path(f"/proc/{server.process.pid}/io").read_text()
    values = dict(re.findall(r"^(\w+): (\d+)$", text, re.MULTILINE))
    return int(values["rchar"]), int(values["wchar"])


def io_since(server: ServerProcess, before: tuple[int, int]) -> tuple[int, int]:
    """(bytes read, bytes written) by the server since ``before`` (an :func:`io_counters`)."""
    read, written = io_counters(server)
    return read - before[0], written - before[1]


@pytest.fixture
def server(attacked: Start, tmp_path: Path) -> ServerProcess:
    """One worker (one process, whose I/O counters are the server's), its own empty TMPDIR."""
    tmpdir = tmp_path / "server-tmp"
    tmpdir.mkdir()
    started = attacked(env={"TMPDIR": str(tmpdir)})
    assert status_of(post(started, "/api/publish", b"{}")) == 401  # warm up: code loaded
    return started


def tmpdir_of(server: ServerProcess) -> Path:
    return Path(server.env["TMPDIR"])


def post(server: ServerProcess, path: str, body: bytes) -> socket.socket:
    """A socket that sent a POST of ``body`` (Content-Length) to ``path``."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout(10))
    sock.sendall(request_head(server, path, f"Content-Length: {len(body)}") + body)
    return sock


def request_head(server: ServerProcess, path: str, framing: str) -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


def read_response(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection."""
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
    except ConnectionResetError:
        pass  # the server closed with our unread body in its buffer: the answer came first
    sock.close()
    return received


def status_of(sock: socket.socket) -> int:
    return int(read_response_head(sock).split(b" ", 2)[1])


def read_response_head(sock: socket.socket) -> bytes:
    received = b""
    while b"\r\n\r\n" not in received:
        chunk = sock.recv(65536)
        assert chunk, "the server closed the connection without an answer"
        received += chunk
    sock.close()
    return received


def assert_refused_413(response: bytes) -> None:
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413 "), head
    assert b"connection: close" in head.lower()
    assert json.loads(body)["error"]["code"] == "body_too_large"


@pytest.mark.parametrize("path", ["/api/publish", "/", "/admin/login/", "/no/such/page/"])
def test_a_1_gib_content_length_gets_413_without_its_body_being_read(
    server: ServerProcess, path: str
) -> None:
    before = io_counters(server)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout(10))
    sock.sendall(request_head(server, path, f"Content-Length: {GIB}") + b"x" * 65536)
    assert_refused_413(read_response(sock))  # read_response: the server closes the connection
    read, written = io_since(server, before)
    assert read < SLACK and written < SLACK, (read, written)
    assert not any(tmpdir_of(server).iterdir())
    assert f"Content-Length {GIB} is over {LIMIT} bytes" in server.log()


def test_a_streamed_body_is_cut_at_the_limit_with_413(server: ServerProcess) -> None:
    stream = 64 * 1024 * 1024  # far more than every socket buffer between us can hold
    before = io_counters(server)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=timeout(10))
    sock.sendall(request_head(server, "/api/publish", "Transfer-Encoding: chunked"))
    sent = [0]

    def send_chunks() -> None:
        chunk = b"x" * 65536
        framed = b"%x\r\n%s\r\n" % (len(chunk), chunk)
        try:
            while sent[0] < stream:
                sock.sendall(framed)
                sent[0] += len(chunk)
            sock.sendall(b"0\r\n\r\n")
        except OSError:
            pass  # the server closed the connection: what we wanted

    sender = threading.Thread(target=send_chunks, daemon=True)
    sender.start()
    response = read_response(sock)
    sender.join(timeout(30))
    assert not sender.is_alive()
    assert_refused_413(response)
    assert sent[0] < stream  # the server stopped reading: the stream could not go through
    read, written = io_since(server, before)
    assert read < LIMIT + SLACK and written < SLACK, (read, written)
    assert not any(tmpdir_of(server).iterdir())
    assert f"streamed body over {LIMIT} bytes" in server.log()


def test_bodies_under_the_limit_are_served(server: ServerProcess) -> None:
    assert status_of(post(server, "/api/publish", b"{}")) == 401  # the API's own answer
    assert status_of(post(server, "/api/publish", b"x" * (LIMIT - 1000))) == 401
