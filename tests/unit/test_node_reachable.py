"""Tier 1: a storm of handshakes asks the backend once (``Node.reachable``): concurrent callers
share one ping, an answer stands for ``REACHABLE_FRESH`` seconds, a failure is everyone's and is
not remembered."""

from __future__ import annotations

import asyncio

import pytest

from megaphone.backends import BackendUnavailable
from megaphone.backends.memory import MemoryBackend
from megaphone.engine import node as node_module
from megaphone.engine.node import Node
from tests.conftest import loop_turns


class CountingBackend(MemoryBackend):
    def __init__(self) -> None:
        super().__init__("memory://")
        self.pings = 0
        self.down = False
        self.gate = asyncio.Event()
        self.gate.set()

    async def ping(self) -> None:
        self.pings += 1
        await self.gate.wait()
        if self.down:
            raise BackendUnavailable("down")


async def test_concurrent_handshakes_share_one_ping_and_its_answer_stands() -> None:
    backend = CountingBackend()
    node = Node(backend)
    backend.gate.clear()
    waiting = [asyncio.ensure_future(node.reachable()) for _ in range(500)]
    await loop_turns()  # every caller is waiting on the one ping
    assert backend.pings == 1
    backend.gate.set()
    await asyncio.gather(*waiting)
    await node.reachable()  # answered a moment ago: no ping
    assert backend.pings == 1


async def test_a_failure_reaches_every_caller_and_the_next_call_pings_again(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    backend = CountingBackend()
    node = Node(backend)
    backend.down = True
    backend.gate.clear()
    waiting = [asyncio.ensure_future(node.reachable()) for _ in range(3)]
    await loop_turns()
    backend.gate.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    assert all(isinstance(r, BackendUnavailable) for r in results)
    backend.down = False
    await node.reachable()
    assert backend.pings == 2
    monkeypatch.setattr(node_module, "REACHABLE_FRESH", 0.0)  # an old answer: ask again
    await node.reachable()
    assert backend.pings == 3
