"""Private backend servers for the scale-out scenarios beyond one Redis: a Redis Cluster (3
masters with a replica each) and a PostgreSQL server, each started on free ports for the run of
the server spec that needs it and stopped after, the way the tests start theirs
(tests/redis_server.py, tests/postgres_server.py): never the shared servers."""

from __future__ import annotations

import contextlib
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

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
def private_backend(backend: str) -> Iterator[str]:
    """Start the private ``backend``; yield its ``MEGAPHONE_BACKEND`` URL; stop it after."""
    _tests_importable()
    if backend == "cluster":
        from tests.redis_server import ClusterSetup

        with tempfile.TemporaryDirectory(prefix="bench-cluster-") as directory:
            cluster = ClusterSetup(Path(directory))
            try:
                yield cluster.url
            finally:
                cluster.stop()
    elif backend == "postgres":
        from tests.postgres_server import PostgresServer

        server = PostgresServer()
        try:
            server.start()
            yield server.url
        finally:
            server.remove()
    else:
        raise ValueError(backend)
