"""The conformance suite (tests/backends/conformance.py) run on every built-in backend: memory,
Redis on a private ``redis-server`` (killed for the failure tests), and Redis behind Sentinel
(a master, its replica, three Sentinels; its failovers are tests/e2e/test_redis_sentinel.py's)."""

from __future__ import annotations

from typing import Any

import pytest

from megaphone.backends import Backend, backend_from_url
from megaphone.backends.memory import MemoryBackend
from tests.backends.conformance import BackendConformance, Harness
from tests.redis_server import RedisServer, SentinelSetup


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
