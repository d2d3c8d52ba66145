"""The conformance suite (tests/backends/conformance.py) run on every built-in backend: memory,
Redis on a private ``redis-server`` (killed for the failure tests), Redis behind Sentinel (a
master, its replica, three Sentinels; its failovers are tests/e2e/test_redis_sentinel.py's),
Redis Cluster (3 masters, a replica each; failovers and resharding in
tests/e2e/test_redis_cluster.py),
PostgreSQL on a private server (stopped for the failure tests, wiped to lose every topic's
state), and durable topics (the Django database's history store wrapping the memory backend,
Redis and PostgreSQL)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from megaphone.backends import Backend, backend_from_url
from megaphone.backends.durable import DatabaseHistory, DurableTopics
from megaphone.backends.memory import MemoryBackend
from tests.backends.conformance import BackendConformance, Harness
from tests.postgres_server import PostgresServer
from tests.redis_server import REDIS_SERVER, ClusterSetup, RedisServer, SentinelSetup


class MemoryHarness(Harness):
    async def build(self, **options: Any) -> Backend:
        backend: Backend = MemoryBackend("memory://", **options)  # mypy checks the protocol
        return backend


class UrlHarness(Harness):
    """A backend shared across processes, built from its URL as the node builds it."""

    shared = True

    def __init__(self, url: str) -> None:
        self.url = url

    async def build(self, **options: Any) -> Backend:
        return backend_from_url(self.url, **options)


class RedisHarness(UrlHarness):
    def __init__(self, server: RedisServer) -> None:
        super().__init__(server.url)
        self.server = server

    def outage(self) -> None:
        self.server.stop()

    def end_outage(self) -> None:
        if self.server.process is None:
            self.server.start()

    def lose_everything(self) -> None:
        self.server.restart()


def all_durable(inner: Backend) -> Backend:
    """``inner`` with every topic durable: numbered and kept in the database."""
    backend: Backend = DurableTopics(
        inner,
        DatabaseHistory(inner.history_limits),
        durable=lambda topic: True,
        any_durable=lambda: True,
    )
    return backend


class DurableHarness(Harness):
    """Every topic durable, fanned out by the memory backend."""

    releases_unused_topics = False  # a durable topic's row, and epoch, are kept for good

    async def build(self, **options: Any) -> Backend:
        return all_durable(MemoryBackend("memory://", **options))


class DurableOver(Harness):
    """Every topic durable, fanned out by the server-backed backend of the harness it is mixed
    into (the server taken down for the failure tests: publishing fails, the history in the
    database stays readable)."""

    releases_unused_topics = False
    history_survives_outage = True

    async def build(self, **options: Any) -> Backend:
        return all_durable(await super().build(**options))

    def lose_everything(self) -> None:
        pytest.skip("durable topics outlive the backend's server")


class DurableOverRedisHarness(DurableOver, RedisHarness):
    pass


class TestMemory(BackendConformance):
    @pytest.fixture
    def harness(self) -> Harness:
        return MemoryHarness()


class TestRedis(BackendConformance):
    @pytest.fixture
    def harness(self, redis_server: RedisServer) -> Harness:
        return RedisHarness(redis_server)


class TestRedisSentinel(BackendConformance):
    @pytest.fixture
    def harness(self, redis_sentinel: SentinelSetup) -> Harness:
        return UrlHarness(redis_sentinel.url)  # failovers: tests/e2e/test_redis_sentinel.py


class RedisClusterHarness(UrlHarness):
    """A private cluster of 3 masters with a replica each (failovers and resharding:
    tests/e2e/test_redis_cluster.py); the outage takes every node down."""

    def __init__(self, cluster: ClusterSetup) -> None:
        super().__init__(cluster.url)
        self.cluster = cluster

    def outage(self) -> None:
        self.cluster.stop()

    def end_outage(self) -> None:
        self.cluster.start_all()

    def lose_everything(self) -> None:
        self.cluster.restart_all()


@pytest.fixture(scope="class")
def shared_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSetup]:
    """One private cluster for the whole class (topics are unique per test; the outage and
    state-loss tests bring it back, ok, before they end): six servers per test would cost
    minutes."""
    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    cluster = ClusterSetup(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.stop()


class TestRedisCluster(BackendConformance):
    @pytest.fixture
    def harness(self, shared_cluster: ClusterSetup) -> Harness:
        return RedisClusterHarness(shared_cluster)


class PostgresHarness(UrlHarness):
    def __init__(self, server: PostgresServer) -> None:
        super().__init__(server.url)
        self.server = server

    def outage(self) -> None:
        self.server.stop()

    def end_outage(self) -> None:
        if not self.server.running:
            self.server.start()

    def lose_everything(self) -> None:
        self.server.wipe()


class DurableOverPostgresHarness(DurableOver, PostgresHarness):
    pass


class TestPostgres(BackendConformance):
    @pytest.fixture
    def harness(self, postgres_server: PostgresServer) -> Harness:
        return PostgresHarness(postgres_server)


@pytest.mark.django_db(transaction=True)
class TestDurableOverPostgres(BackendConformance):
    @pytest.fixture
    def harness(self, postgres_server: PostgresServer) -> Harness:
        return DurableOverPostgresHarness(postgres_server)


@pytest.mark.django_db(transaction=True)
class TestDurable(BackendConformance):
    @pytest.fixture
    def harness(self) -> Harness:
        return DurableHarness()


@pytest.mark.django_db(transaction=True)
class TestDurableOverRedis(BackendConformance):
    @pytest.fixture
    def harness(self, redis_server: RedisServer) -> Harness:
        return DurableOverRedisHarness(redis_server)
