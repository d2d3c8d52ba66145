"""A TCP proxy between a client and a server that a test can cut, as a network cut looks.

``CuttableProxy(server.port)`` listens on ``proxy.port`` and forwards every connection to the
server. :meth:`CuttableProxy.cut` resets every connection and refuses new ones until
:meth:`CuttableProxy.restore`; :meth:`CuttableProxy.deafen` drops what the server sends while the
client's bytes still reach it (a reply lost on its way back).
"""

from __future__ import annotations

import contextlib
import socket
import struct
import threading

from tests.conftest import free_port


class CuttableProxy:
    """127.0.0.1:port -> the server, with a switch that cuts the network."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = free_port()
        self.listener = socket.create_server(("127.0.0.1", self.port))
        self.sockets: set[socket.socket] = set()
        self.lock = threading.Lock()
        self.up = True
        self.deaf = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.up:
                self._reset(client)
                continue
            upstream = socket.create_connection(("127.0.0.1", self.upstream_port))
            with self.lock:
                self.sockets.update((client, upstream))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket, downstream: bool) -> None:
        try:
            while data := source.recv(65536):
                if not (downstream and self.deaf):
                    target.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (source, target):
                self._reset(sock)

    def _reset(self, sock: socket.socket) -> None:
        """Close with RST, as a dead network path shows up."""
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)  # wakes the pump blocked in recv() on it
        sock.close()
        with self.lock:
            self.sockets.discard(sock)

    def deafen(self) -> None:
        """Drop, from now on, what the server sends (until :meth:`restore`)."""
        self.deaf = True

    def cut(self) -> None:
        self.up = False
        with self.lock:
            sockets = list(self.sockets)
        for sock in sockets:
            self._reset(sock)

    def restore(self) -> None:
        self.up = True
        self.deaf = False

    def close(self) -> None:
        self.cut()
        self.listener.close()
