"""Fixtures shared by the three tiers of tests.

* tier 1 (``tests/unit/``): pure logic, no sockets;
* tier 2 (``tests/asgi/``): the ASGI application in-process, through Channels' communicator;
* tier 3 (``tests/e2e/``, marker ``e2e``): real server processes on free ports, real clients,
  real Redis and a real browser (marker ``browser``).

Every timeout is multiplied by ``MEGAPHONE_TEST_TIMEOUT_FACTOR`` (CI sets it higher).
"""

from __future__ import annotations

import asyncio
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from tests.postgres_server import PostgresServer
    from tests.redis_server import ClusterSetup, RedisServer, SentinelSetup

ROOT = Path(__file__).resolve().parent.parent
TIMEOUT_FACTOR = float(os.environ.get("MEGAPHONE_TEST_TIMEOUT_FACTOR", "1"))
#: The transport of every ``manage.py serve`` the end-to-end tier starts (``--transport``):
#: ``MEGAPHONE_TEST_TRANSPORT=native`` runs the tier on the native transport.
TRANSPORT = os.environ.get("MEGAPHONE_TEST_TRANSPORT", "asgi")


def timeout(seconds: float) -> float:
    """``seconds`` scaled by the suite's timeout factor."""
    return seconds * TIMEOUT_FACTOR


async def loop_turns(count: int = 5) -> None:
    """Let the event loop run ``count`` turns: whatever is already runnable runs. For checks that
    nothing more happens while everything left waits on an event the test holds (a timer would
    make such a check slow, or flaky on a loaded machine)."""
    for _ in range(count):
        await asyncio.sleep(0)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(
    port: int, process: subprocess.Popen[bytes] | None, seconds: float, host: str = "127.0.0.1"
) -> None:
    deadline = time.monotonic() + timeout(seconds)
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {seconds} s")


@dataclass
class ServerProcess:
    """A server process of the example project: ``manage.py serve`` unless ``name`` says which
    other ASGI server."""

    port: int
    process: subprocess.Popen[bytes]
    log_path: Path
    env: dict[str, str] = field(default_factory=dict)
    #: Which ASGI server it is (see :data:`ASGI_SERVERS`).
    name: str = "serve"
    #: The address it listens on.
    host: str = "127.0.0.1"

    @property
    def ws_url(self) -> str:
        return f"ws://{self.host}:{self.port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            os.killpg(self.process.pid, sig)
            try:
                self.process.wait(timeout(10))
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode


def wait_for_log(server: ServerProcess, text: str, seconds: float = 5) -> str:
    """The server's log once ``text`` is in it (polled: another process's file)."""
    deadline = time.monotonic() + timeout(seconds)
    while text not in (log := server.log()):
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in the log:\n{log}")
        time.sleep(0.05)
    return log


def example_env(tmp_path: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of an example-project process whose database lives in ``tmp_path``."""
    return {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "DJANGO_SETTINGS_MODULE": "tests.e2e.example_settings",
        "PYTHONPATH": str(ROOT),
        "DJANGO_SQLITE_PATH": str(tmp_path / "db.sqlite3"),
        **(env or {}),
    }


def launch(
    command: list[str],
    tmp_path: Path,
    port: int,
    env: dict[str, str] | None = None,
    *,
    cwd: Path | None = None,
    name: str = "serve",
    host: str = "127.0.0.1",
) -> ServerProcess:
    """Migrate the example project's database, run ``command`` (a server that will listen on
    ``host``:``port``) in its own process group, logging to ``tmp_path``, and wait until it
    listens."""
    full_env = example_env(tmp_path, env)
    log_path = tmp_path / f"server-{port}.log"
    manage = [sys.executable, str(ROOT / "example" / "manage.py")]
    subprocess.run([*manage, "migrate", "--noinput", "-v", "0"], env=full_env, check=True)
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command,
            env=full_env,
            cwd=cwd,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = ServerProcess(port, process, log_path, env or {}, name, host)
    try:
        wait_for_port(port, process, 30, host)
    except Exception:
        server.stop(signal.SIGKILL)
        raise RuntimeError(f"server did not start:\n{server.log()}") from None
    return server


def start_server(
    tmp_path: Path,
    *,
    workers: int = 1,
    env: dict[str, str] | None = None,
    port: int | None = None,
    host: str = "127.0.0.1",
    wrap: Callable[[list[str]], list[str]] | None = None,
    transport: str = TRANSPORT,
) -> ServerProcess:
    """Start the example project under ``manage.py serve`` on ``host`` and a free port and wait
    until every worker serves: the port accepts as soon as the parent listens, and a test's
    first clients would all go to the first worker up. ``wrap``: what runs the command line
    (e.g. in a network namespace, tests/netns.py), the command itself by default. ``transport``:
    ``serve --transport``, :data:`TRANSPORT` by default."""
    port = port or free_port()
    manage = [sys.executable, str(ROOT / "example" / "manage.py")]
    command = [*manage, "serve", "--host", host, "--port", str(port), "--workers", str(workers)]
    command += ["--transport", transport]
    server = launch(command if wrap is None else wrap(command), tmp_path, port, env, host=host)
    deadline = time.monotonic() + timeout(30)
    # uvicorn logs this line in each worker once the application is loaded, before it accepts.
    while server.log().count("Started server process") < workers:
        if server.process.poll() is not None or time.monotonic() > deadline:
            server.stop(signal.SIGKILL)
            raise RuntimeError(f"not every worker started:\n{server.log()}")
        time.sleep(0.05)
    return server


#: The ASGI servers the end-to-end tier runs the example project under, each started by
#: :func:`start_asgi_server`; "serve" is ``manage.py serve`` (uvicorn with Megaphone's protocols).
ASGI_SERVERS = ("serve", "uvicorn", "daphne", "hypercorn", "granian")


def asgi_server_command(name: str, port: int) -> list[str]:
    """The command line that serves ``example.asgi:application`` under ``name`` on ``port``."""
    app, host, bin_dir = "example.asgi:application", "127.0.0.1", Path(sys.executable).parent
    commands = {
        "serve": [
            sys.executable,
            str(ROOT / "example" / "manage.py"),
            "serve",
            "--port",
            str(port),
            "--transport",
            TRANSPORT,
        ],
        "uvicorn": [
            *(sys.executable, "-m", "uvicorn", app, "--host", host, "--port", str(port)),
            *("--lifespan", "off"),
        ],
        "daphne": [str(bin_dir / "daphne"), "--bind", host, "--port", str(port), app],
        "hypercorn": [str(bin_dir / "hypercorn"), "--bind", f"{host}:{port}", app],
        # asginl: ASGI without lifespan events, which Django's and Channels' routers refuse
        "granian": [
            *(str(bin_dir / "granian"), "--interface", "asginl", "--workers", "1"),
            *("--host", host, "--port", str(port), app),
        ],
    }
    return commands[name]


def start_asgi_server(
    tmp_path: Path, name: str, *, env: dict[str, str] | None = None
) -> ServerProcess:
    """Start the example project under the ASGI server ``name`` (one of :data:`ASGI_SERVERS`)
    on a free port, one process, and wait for it; skip the test if that server is not
    installed."""
    if name != "serve" and importlib.util.find_spec(name) is None:
        pytest.skip(f"{name} is not installed here (pip install {name})")
    port = free_port()
    path = os.pathsep.join(filter(None, [str(ROOT / "example"), (env or {}).get("PYTHONPATH")]))
    command = asgi_server_command(name, port)
    return launch(command, tmp_path, port, {**(env or {}), "PYTHONPATH": path}, name=name)


def create_superuser(server: ServerProcess, username: str) -> None:
    """A superuser in ``server``'s database, with the password ``a-long-test-password``."""
    env = example_env(
        server.log_path.parent, {**server.env, "DJANGO_SUPERUSER_PASSWORD": "a-long-test-password"}
    )
    manage = [sys.executable, str(ROOT / "example" / "manage.py")]
    email = f"{username}@example.com"
    subprocess.run(
        [*manage, "createsuperuser", "--noinput", "--username", username, "--email", email],
        env=env,
        check=True,
        capture_output=True,
    )


@pytest.fixture(autouse=True, scope="session")
def serving_process() -> None:
    """The in-process tiers serve clients from the test process itself (ASGI communicators), so
    ``megaphone.publish()`` on the in-memory backend reaches them, as in a server's process."""
    from megaphone.engine.publishing import mark_serving

    mark_serving()


@pytest.fixture
def server_factory(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    """Start servers with ``server_factory(workers=..., env=...)``; all are stopped at the end."""
    servers: list[ServerProcess] = []

    def factory(**kwargs: object) -> ServerProcess:
        server = start_server(tmp_path, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        return server

    yield factory
    for server in servers:
        server.stop(signal.SIGKILL)


@pytest.fixture
def server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """One example server on the in-memory backend."""
    return server_factory()


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    """A private, empty ``redis-server`` on a free port (see tests/redis_server.py), killed at
    the end; the test may stop and restart it."""
    from tests.redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def redis_sentinel(tmp_path: Path) -> Iterator[SentinelSetup]:
    """A private master, its replica and three Sentinels (tests/redis_server.py), all killed at
    the end; the test may kill the master or fail over."""
    from tests.redis_server import REDIS_SERVER, SentinelSetup

    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    setup = SentinelSetup(tmp_path)
    yield setup
    setup.stop()


@pytest.fixture
def redis_cluster(tmp_path: Path) -> Iterator[ClusterSetup]:
    """A private Redis Cluster: 3 masters with 1 replica each (tests/redis_server.py), all
    killed at the end; the test may kill a master, or move slots."""
    from tests.redis_server import REDIS_SERVER, ClusterSetup

    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    setup = ClusterSetup(tmp_path)
    yield setup
    setup.stop()


@pytest.fixture
def postgres_server() -> Iterator[PostgresServer]:
    """A private PostgreSQL server on a free port with an empty ``megaphone`` database (see
    tests/postgres_server.py), removed at the end; the test may stop and restart it. Without
    PostgreSQL's binaries (or with MEGAPHONE_TEST_PG=shared), a database of the test's own on
    the shared server instead, dropped at the end; tests that stop the server then skip."""
    from tests.postgres_server import AVAILABLE, PostgresServer, SharedDatabase

    if AVAILABLE and os.environ.get("MEGAPHONE_TEST_PG") != "shared":
        server = PostgresServer()
        try:
            server.start()
            yield server
        finally:
            server.remove()
    elif SharedDatabase.reachable():
        database = SharedDatabase()
        try:
            yield database  # type: ignore[misc]  # the same interface
        finally:
            database.remove()
    else:
        pytest.skip("needs PostgreSQL's initdb and pg_ctl (MEGAPHONE_PG_BIN) or a server at 5432")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Everything under tests/e2e/ is tier 3 and carries the ``e2e`` marker; the security tier
    (tests/security/) runs real servers too, and carries ``e2e`` and ``security``."""
    for item in items:
        path = str(item.path)
        if "/tests/e2e/" in path:
            item.add_marker(pytest.mark.e2e)
        elif "/tests/security/" in path:
            item.add_marker(pytest.mark.e2e)
            item.add_marker(pytest.mark.security)


@pytest.fixture(scope="session")
def node_tools() -> Path:
    """TypeScript and React's types, installed once (tests/node_tools.py); skips without npm."""
    from tests import node_tools

    if node_tools.NPM is None or node_tools.NODE is None:
        pytest.skip("needs Node.js and npm")
    return node_tools.install()
