"""The conformance suite (tests/backends/conformance.py) run on every built-in backend: memory,
Redis on a private ``redis-server`` (killed for the failure tests), and PostgreSQL on a private
server (stopped for the failure tests, wiped to lose every topic's state)."""

from __future__ import annotations

from typing import Any

import pytest

from megaphone.backends import Backend
from megaphone.backends.memory import MemoryBackend
from megaphone.backends.postgres import PostgresBackend
from megaphone.backends.redis import RedisBackend
from tests.backends.conformance import BackendConformance, Harness
from tests.postgres_server import PostgresServer
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


class TestMemory(BackendConformance):
    @pytest.fixture
    def harness(self) -> Harness:
        return MemoryHarness()


class TestRedis(BackendConformance):
    @pytest.fixture
    def harness(self, redis_server: RedisServer) -> Harness:
        return RedisHarness(redis_server)


class PostgresHarness(Harness):
    shared = True

    def __init__(self, server: PostgresServer) -> None:
        self.server = server

    async def build(self, **options: Any) -> Backend:
        backend: Backend = PostgresBackend(self.server.url, **options)
        return backend

    def outage(self) -> None:
        self.server.stop()

    def end_outage(self) -> None:
        if not self.server.running:
            self.server.start()

    def lose_everything(self) -> None:
        self.server.wipe()


class TestPostgres(BackendConformance):
    @pytest.fixture
    def harness(self, postgres_server: PostgresServer) -> Harness:
        return PostgresHarness(postgres_server)
