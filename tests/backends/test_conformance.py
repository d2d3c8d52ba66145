"""The conformance suite (tests/backends/conformance.py) run on every built-in backend: memory,
Redis on a private ``redis-server`` (killed for the failure tests), and durable topics (the
Django database's history store wrapping the memory backend, and wrapping Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from megaphone.backends import Backend
from megaphone.backends.durable import DatabaseHistory, DurableTopics
from megaphone.backends.memory import MemoryBackend
from megaphone.backends.redis import RedisBackend
from tests.backends.conformance import BackendConformance, Harness
from tests.redis_server import RedisServer


class MemoryHarness(Harness):
    async def build(self, **options: Any) -> Backend:
        backend: Backend = MemoryBackend("memory://", **options)  # mypy checks the protocol
        return backend


class RedisHarness(Harness):
    shared = True

    def __init__(self, server: RedisServer) -> None:
        self.server = server

    async def build(self, **options: Any) -> Backend:
        backend: Backend = RedisBackend(self.server.url, **options)
        return backend

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


class DurableOverRedisHarness(RedisHarness):
    """Every topic durable, fanned out by Redis (killed for the failure tests: publishing fails,
    the history in the database stays readable)."""

    releases_unused_topics = False
    history_survives_outage = True

    async def build(self, **options: Any) -> Backend:
        return all_durable(await super().build(**options))

    def lose_everything(self) -> None:
        pytest.skip("durable topics outlive Redis")


class TestMemory(BackendConformance):
    @pytest.fixture
    def harness(self) -> Harness:
        return MemoryHarness()


class TestRedis(BackendConformance):
    @pytest.fixture
    def harness(self, redis_server: RedisServer) -> Harness:
        return RedisHarness(redis_server)


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
