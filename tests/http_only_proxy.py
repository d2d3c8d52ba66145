"""An HTTP proxy that refuses WebSocket upgrades, as some corporate proxies do, for the tests of
the HTTP transport: asyncio, in a thread of its own (so a Playwright test's sync loop can drive a
browser through it).

``HttpOnlyProxy([port, ...])`` listens on ``proxy.port``. A request asking for a WebSocket
upgrade gets ``403`` and a close. Any other request is forwarded to the next upstream in turn
(round robin, no stickiness), with ``Connection: close`` added to its head so that every request
is a connection of its own: two requests of one page may reach two servers. :meth:`cut_streams`
resets every open event stream (``Accept: text/event-stream``) and :meth:`hold` makes the proxy
reset every new connection until :meth:`release`, as a network cut looks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import socket
import struct
import threading

from tests.conftest import free_port

_HEAD_LIMIT = 64 * 1024


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


class HttpOnlyProxy:
    def __init__(self, upstream_ports: list[int]) -> None:
        self.port = free_port()
        self._upstreams = itertools.cycle(upstream_ports)
        self.held = False
        self.refused_upgrades = 0
        self.forwarded: list[tuple[int, str]] = []  # (upstream port, request line)
        self._streams: set[asyncio.StreamWriter] = set()
        self._writers: set[asyncio.StreamWriter] = set()  # every open connection, both ends
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(ready,), daemon=True)
        self._thread.start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        server = loop.run_until_complete(asyncio.start_server(self._serve, "127.0.0.1", self.port))
        ready.set()
        loop.run_forever()
        server.close()
        for writer in list(self._writers):
            _reset(writer)
        tasks = asyncio.all_tasks(loop)
        for task in tasks:
            task.cancel()
        loop.run_until_complete(
            asyncio.gather(*tasks, server.wait_closed(), return_exceptions=True)
        )
        loop.close()

    def _call(self, function: object) -> None:
        done = threading.Event()

        def run() -> None:
            try:
                function()  # type: ignore[operator]
            finally:
                done.set()

        self._loop.call_soon_threadsafe(run)
        done.wait()

    def cut_streams(self) -> None:
        def cut() -> None:
            for writer in list(self._streams):
                _reset(writer)

        self._call(cut)

    def hold(self) -> None:
        self.held = True

    def release(self) -> None:
        self.held = False

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            await self._forward(reader, writer)
        finally:
            self._writers.discard(writer)
            if not writer.is_closing():
                _reset(writer)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.held:
            _reset(writer)
            return
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
            writer.close()
            return
        lines = head.decode("latin-1").split("\r\n")
        names = {line.split(":", 1)[0].strip().lower(): line for line in lines[1:] if ":" in line}
        if "websocket" in names.get("upgrade", "").lower():
            self.refused_upgrades += 1
            writer.write(
                b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
            with contextlib.suppress(ConnectionError):
                await writer.drain()
            writer.close()
            return
        kept = [line for line in lines[1:] if line and not line.lower().startswith("connection:")]
        head = "\r\n".join([lines[0], *kept, "Connection: close", "", ""]).encode("latin-1")
        port = next(self._upstreams)
        self.forwarded.append((port, lines[0]))
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            _reset(writer)
            return
        self._writers.add(up_writer)
        if "text/event-stream" in names.get("accept", ""):
            self._streams.add(writer)
        up_writer.write(head)
        try:
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            self._streams.discard(writer)
            self._writers.discard(up_writer)
            if not up_writer.is_closing():
                _reset(up_writer)


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while (data := await reader.read(65536)) and not writer.is_closing():
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        if not writer.is_closing():
            with contextlib.suppress(OSError):
                if writer.can_write_eof():
                    writer.write_eof()
