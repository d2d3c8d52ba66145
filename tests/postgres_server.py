"""A private PostgreSQL server per test: ``initdb`` in a fresh directory, ``postgres`` on a free
port (127.0.0.1 only, trust authentication, no Unix socket outside its directory), stoppable
mid-test. Where PostgreSQL's binaries are missing, :class:`SharedDatabase` instead: a database
of the test's own on the shared server at 127.0.0.1:5432 (trust authentication), created for the
test and dropped after it; nothing else on that server is touched, and the tests that need to
stop the server skip.

Tests never use a database they did not create: :class:`PostgresServer` runs the binaries of
:data:`PG_BIN` (as the ``postgres`` user when the tests run as root: PostgreSQL refuses root).
:meth:`PostgresServer.stop` kills it (``immediate``: like a crash, but its data stays on disk,
as a real database's does); :meth:`PostgresServer.start` starts it again on the same port, with
its data; :meth:`PostgresServer.wipe` starts it again empty (a lost database). The
``postgres_server`` fixture (tests/conftest.py) yields a started one and removes it at the end.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

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


#: The shared server of the fallback (never restarted, never written outside a test's database).
SHARED = os.environ.get("MEGAPHONE_SHARED_PG", "postgres://postgres@127.0.0.1:5432")


class _Database:
    """What the tests use of a server: its URL, queries, and faults (where allowed)."""

    port: int
    running = True
    name = "megaphone"
    #: The role the tests connect as.
    user = "megaphone"

    @property
    def url(self) -> str:
        return f"{self.server_url}/{self.name}"

    @property
    def server_url(self) -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}"

    def psql(self, database: str, query: str) -> str:
        """``query``'s rows, one a line, columns separated by ``|`` (as ``psql -At`` prints
        them); ``database`` "megaphone" is the test's own."""
        name = self.name if database == "megaphone" else database
        with psycopg.connect(f"{self.server_url}/{name}", autocommit=True) as connection:
            cursor = connection.execute(query.encode())
            rows = cursor.fetchall() if cursor.description else []
        return "".join("|".join(str(v) for v in row) + "\n" for row in rows)

    def terminate(self, application: str) -> int:
        """``pg_terminate_backend`` every session of the test's database whose
        ``application_name`` is LIKE ``application`` (never this query's own); how many."""
        killed = self.psql(
            "megaphone",
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            f"WHERE application_name LIKE '{application}' AND pid <> pg_backend_pid() "
            "AND datname = current_database()",
        )
        return int(killed)

    def stop(self) -> None:
        pytest.skip("the shared PostgreSQL server is never stopped")

    def start(self) -> None:
        pytest.skip("the shared PostgreSQL server is never stopped")

    def restart(self) -> None:
        self.stop()

    def wipe(self) -> None:
        self.stop()

    def remove(self) -> None:
        raise NotImplementedError


class SharedDatabase(_Database):
    """A database of the test's own on the shared server, dropped by :meth:`remove`."""

    def __init__(self) -> None:
        self.shared = SHARED
        self.name = f"megaphone_test_{uuid.uuid4().hex[:12]}"
        self.port = int(self.shared.rsplit(":", 1)[1])
        self.user = self.shared.split("//", 1)[1].split("@", 1)[0]
        self.psql("postgres", f'CREATE DATABASE "{self.name}"')
        with contextlib.suppress(psycopg.Error):  # not there: tests that read it skip that part
            self.psql("megaphone", "CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    @property
    def server_url(self) -> str:
        return self.shared

    @staticmethod
    def reachable() -> bool:
        try:
            psycopg.connect(f"{SHARED}/postgres", connect_timeout=2).close()
        except psycopg.Error:
            return False
        return True

    def remove(self) -> None:
        self.psql("postgres", f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')


class PostgresServer(_Database):
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

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)
