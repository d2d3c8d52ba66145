"""The conformance suite (tests/backends/conformance.py) run on every built-in backend: memory,
Redis on a private ``redis-server`` (killed for the failure tests), and Redis behind Sentinel
(a master, its replica, three Sentinels; its failovers are tests/e2e/test_redis_sentinel.py's)."""

from __future__ import annotations

from typing import Any

import pytest

from megaphone.backends import Backend
from megaphone.backends.memory import MemoryBackend
from megaphone.backends.redis import RedisBackend
from megaphone.backends.redis_sentinel import RedisSentinelBackend
from tests.backends.conformance import BackendConformance, Harness
from tests.redis_server import RedisServer, SentinelSetup


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


class TestMemory(BackendConformance):
    @pytest.fixture
    def harness(self) -> Harness:
        return MemoryHarness()


class TestRedis(BackendConformance):
    @pytest.fixture
    def harness(self, redis_server: RedisServer) -> Harness:
        return RedisHarness(redis_server)


class SentinelHarness(Harness):
    shared = True

    def __init__(self, setup: SentinelSetup) -> None:
        self.setup = setup

    async def build(self, **options: Any) -> Backend:
        backend: Backend = RedisSentinelBackend(self.setup.url, **options)
        return backend


class TestRedisSentinel(BackendConformance):
    @pytest.fixture
    def harness(self, redis_sentinel: SentinelSetup) -> Harness:
        return SentinelHarness(redis_sentinel)
