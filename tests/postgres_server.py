"""A private PostgreSQL server per test: ``initdb`` in a fresh directory, ``postgres`` on a free
port (127.0.0.1 only, trust authentication, no Unix socket outside its directory), stoppable
mid-test.

Tests never use a database they did not create: :class:`PostgresServer` runs the binaries of
:data:`PG_BIN` (as the ``postgres`` user when the tests run as root: PostgreSQL refuses root).
:meth:`PostgresServer.stop` kills it (``immediate``: like a crash, but its data stays on disk,
as a real database's does); :meth:`PostgresServer.start` starts it again on the same port, with
its data; :meth:`PostgresServer.wipe` starts it again empty (a lost database). The
``postgres_server`` fixture (tests/conftest.py) yields a started one and removes it at the end.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

from tests.conftest import free_port, timeout, wait_for_port

PG_BIN = Path(os.environ.get("MEGAPHONE_PG_BIN", "/usr/lib/postgresql/15/bin"))


def _available() -> bool:
    if not (PG_BIN / "initdb").exists():
        return False
    if os.getuid() != 0:
        return True
    try:
        pwd.getpwnam("postgres")
    except KeyError:
        return False
    return shutil.which("runuser") is not None


#: Whether a private server can be started here.
AVAILABLE = _available()


def _as_owner(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.getuid() == 0 else command


class PostgresServer:
    def __init__(self) -> None:
        self.port = free_port()
        # Not under pytest's tmp_path: the postgres user must own it, and root's is private.
        self.directory = Path(tempfile.mkdtemp(prefix="megaphone-pg-"))
        self.data = self.directory / "data"
        self.log = self.directory / "server.log"
        self.running = False
        if os.getuid() == 0:
            shutil.chown(self.directory, "postgres")
        self._initdb()

    @property
    def url(self) -> str:
        return f"postgres://megaphone@127.0.0.1:{self.port}/megaphone"

    def _initdb(self) -> None:
        subprocess.run(
            _as_owner(
                [
                    str(PG_BIN / "initdb"),
                    *("-D", str(self.data), "-U", "megaphone", "--auth=trust"),
                    *("-E", "UTF8", "--locale=C", "--no-sync"),
                ]
            ),
            check=True,
            capture_output=True,
            timeout=timeout(60),
        )
        with (self.data / "postgresql.conf").open("a") as conf:
            conf.write(
                f"port = {self.port}\nlisten_addresses = '127.0.0.1'\n"
                f"unix_socket_directories = '{self.directory}'\nfsync = off\n"
                "max_connections = 200\nshared_preload_libraries = 'pg_stat_statements'\n"
                "pg_stat_statements.track = all\n"
            )

    def _ctl(self, *args: str) -> None:
        subprocess.run(
            _as_owner([str(PG_BIN / "pg_ctl"), "-D", str(self.data), *args]),
            check=True,
            capture_output=True,
            timeout=timeout(60),
        )

    def start(self) -> None:
        """Start the server on :attr:`port` and wait until it accepts connections; create the
        ``megaphone`` database the first time."""
        assert not self.running
        self._ctl("-l", str(self.log), "-w", "start")
        self.running = True
        wait_for_port(self.port, None, 10)
        exists = self.psql("postgres", "SELECT 1 FROM pg_database WHERE datname = 'megaphone'")
        if not exists.strip():
            self.psql("postgres", "CREATE DATABASE megaphone")
            self.psql("megaphone", "CREATE EXTENSION pg_stat_statements")

    def stop(self) -> None:
        """Stop at once (``-m immediate``: connections cut, no shutdown checkpoint)."""
        if self.running:
            self.running = False
            self._ctl("-m", "immediate", "stop")

    def restart(self) -> None:
        self.stop()
        self.start()

    def wipe(self) -> None:
        """Stop, lose every byte of data, start again empty."""
        self.stop()
        shutil.rmtree(self.data)
        self._initdb()
        self.start()

    def psql(self, database: str, query: str) -> str:
        """``query``'s rows as ``psql -At`` prints them."""
        result = subprocess.run(
            [
                str(PG_BIN / "psql"),
                *("-h", "127.0.0.1", "-p", str(self.port), "-U", "megaphone", "-d", database),
                *("-At", "-v", "ON_ERROR_STOP=1", "-c", query),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=timeout(30),
        )
        return result.stdout

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
