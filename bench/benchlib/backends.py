"""Private backend servers for the scale-out scenarios beyond one Redis: a Redis Cluster (3
masters with a replica each) and a PostgreSQL server, each started on free ports for the run of
the server spec that needs it and stopped after, the way the tests start theirs
(tests/redis_server.py, tests/postgres_server.py): never the shared servers."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

from . import procstat

REPO = Path(__file__).resolve().parents[2]


def _tests_importable() -> None:
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))


def unavailable_reason(backend: str) -> str | None:
    """None when the private ``backend`` ("cluster", "postgres") can be started, else why not."""
    if backend == "cluster":
        if shutil.which("redis-server") is None or shutil.which("redis-cli") is None:
            return "redis-server or redis-cli is not installed"
        return None
    if backend == "postgres":
        _tests_importable()
        from tests.postgres_server import AVAILABLE

        return None if AVAILABLE else "PostgreSQL's initdb and pg_ctl are not installed"
    return f"unknown backend {backend!r}"


@contextlib.contextmanager
def private_backend(backend: str) -> Iterator[tuple[str, Callable[[], list[int]]]]:
    """Start the private ``backend``; yield its ``MEGAPHONE_BACKEND`` URL and a function
    listing its processes (their CPU counts as the server's); stop it after."""
    _tests_importable()
    if backend == "cluster":
        from tests.redis_server import ClusterSetup

        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory:
            cluster = ClusterSetup(Path(directory))

            def nodes() -> list[int]:
                return [n.process.pid for n in cluster.nodes if n.process is not None]

            try:
                yield cluster.url, nodes
            finally:
                cluster.stop()
    elif backend == "postgres":
        from tests.postgres_server import PostgresServer

        server = PostgresServer()

        def postgres() -> list[int]:  # the postmaster and its children (one per connection)
            lines = (server.data / "postmaster.pid").read_text().split()
            return procstat.descendants(int(lines[0]))

        try:
            server.start()
            yield server.url, postgres
        finally:
            server.remove()
    else:
        raise ValueError(backend)
