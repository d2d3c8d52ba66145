"""A private ``redis-server`` per test: on a free port, no persistence, stoppable mid-test.

Tests never use a Redis they did not start: :class:`RedisServer` runs ``redis-server --save ""
--appendonly no`` on a free port of 127.0.0.1 (or of the address ``host``, e.g. a bridge that
network namespaces reach: tests/netns.py); :meth:`RedisServer.stop` kills it (SIGKILL by
default, as a crash) and :meth:`RedisServer.start` starts it again, empty, on the same port. The
``redis_server`` fixture (tests/conftest.py) yields a started one and kills it at the end.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
from pathlib import Path

from tests.conftest import free_port, timeout, wait_for_port

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    def __init__(self, directory: Path, host: str = "127.0.0.1") -> None:
        self.directory = directory
        self.host = host  # the address it listens on
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        """Start the server (empty) on :attr:`port` and wait until it accepts connections."""
        assert REDIS_SERVER is not None and self.process is None
        self.starts += 1
        log = (self.directory / f"redis-{self.port}-{self.starts}.log").open("wb")
        with log:
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    *("--port", str(self.port), "--bind", self.host),
                    # no password: on another address than loopback, let others in
                    *("--protected-mode", "yes" if self.host == "127.0.0.1" else "no"),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
                    *("--maxclients", "10000"),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.process, 10, self.host)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (SIGKILL: like a crash; everything in it is lost)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout(10))

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self):  # type: ignore[no-untyped-def]
        """A synchronous redis-py client of this server (close it)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=timeout(5))

    def info(self, section: str) -> dict[str, object]:
        with self.client() as client:
            return client.info(section)  # type: ignore[no-any-return]

    def command_calls(self, command: str) -> int:
        """How many times ``command`` ran since the server started (INFO commandstats)."""
        stats = self.info("commandstats").get(f"cmdstat_{command.lower()}")
        return int(stats["calls"]) if isinstance(stats, dict) else 0
