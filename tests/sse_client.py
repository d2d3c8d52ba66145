"""A small Server-Sent Events client for the tests: HTTP/1.1 over asyncio streams, and the
event-stream parser of the WHATWG HTML spec (fields, comments, ``id`` kept across events, an
event dispatched only with data), so the tests read a stream as a browser's ``EventSource`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from tests.conftest import timeout


@dataclass
class Event:
    type: str
    data: str
    id: str


@dataclass
class Stream:
    """One open stream: the response's status and headers, then :meth:`next` event by event."""

    status: int
    headers: dict[str, str]
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    last_event_id: str = ""
    retry: int | None = None
    comments: list[str] = field(default_factory=list)
    _chunk_left: int = 0
    _lines: list[str] = field(default_factory=list)
    _pending: bytes = b""

    async def _read_chunk(self) -> bytes:
        """The next piece of the chunked body; b"" at its end."""
        if self._chunk_left == 0:
            size = int((await self.reader.readline()).strip() or b"0", 16)
            if size == 0:
                return b""
            self._chunk_left = size
        data = await self.reader.read(self._chunk_left)
        if not data:
            return b""
        self._chunk_left -= len(data)
        if self._chunk_left == 0:
            await self.reader.readexactly(2)  # the chunk's CRLF
        return data

    async def _line(self) -> str | None:
        while b"\n" not in self._pending:
            data = await self._read_chunk()
            if not data:
                return None
            self._pending += data
        line, self._pending = self._pending.split(b"\n", 1)
        return line.decode().removesuffix("\r")

    async def next(self, wait: float = 5) -> Event | None:
        """The next dispatched event, or None when the stream ends."""
        return await asyncio.wait_for(self._next(), timeout(wait))

    async def _next(self) -> Event | None:
        event_type = ""
        data: list[str] = []
        while True:
            line = await self._line()
            if line is None:
                return None
            if line == "":
                if not data:
                    event_type = ""
                    continue  # nothing to dispatch (an id alone still set last_event_id)
                return Event(event_type or "message", "\n".join(data), self.last_event_id)
            if line.startswith(":"):
                self.comments.append(line[1:].strip())
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event_type = value
            elif name == "id" and "\0" not in value:
                self.last_event_id = value
            elif name == "retry" and value.isdigit():
                self.retry = int(value)

    async def body(self) -> str:
        """The whole body of a response that is not a stream (an error)."""
        chunks = []
        while chunk := await asyncio.wait_for(self._read_chunk(), timeout(5)):
            chunks.append(chunk)
        return b"".join(chunks).decode()

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(OSError):
            await self.writer.wait_closed()


async def connect(url: str, headers: dict[str, str] | None = None) -> Stream:
    """GET ``url`` (``http://host:port/path?query``) as an ``EventSource`` would."""
    parts = urlsplit(url)
    reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
    target = parts.path + (f"?{parts.query}" if parts.query else "")
    lines = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "Accept: text/event-stream"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout(10))
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    response_headers = {}
    for line in header_lines:
        if line:
            name, _, value = line.partition(":")
            response_headers[name.strip().lower()] = value.strip()
    assert response_headers.get("transfer-encoding") == "chunked", response_headers
    return Stream(int(status_line.split()[1]), response_headers, reader, writer)
