"""Tier 1: the bounded outbox and the slow-client policy."""

from __future__ import annotations

import asyncio

from megaphone.outbox import Outbox


async def test_get_batch_returns_everything_queued_in_order() -> None:
    outbox = Outbox(10, 1000)
    for i in range(3):
        assert outbox.put(i, 1)
    assert await outbox.get_batch() == [0, 1, 2]
    assert len(outbox) == 0 and outbox.pending_bytes == 0


async def test_get_batch_waits_for_a_put() -> None:
    outbox = Outbox(10, 1000)
    getter = asyncio.ensure_future(outbox.get_batch())
    await asyncio.sleep(0)
    assert not getter.done()
    outbox.put("a", 1)
    assert await asyncio.wait_for(getter, 1) == ["a"]


async def test_overflow_by_count_closes_once_and_drops_everything() -> None:
    calls: list[int] = []
    outbox = Outbox(3, 1000, calls.append)
    assert all(outbox.put(i, 1) for i in range(3))
    assert outbox.put(3, 1) is False
    assert outbox.put(4, 1) is False
    assert outbox.overflowed and outbox.closed
    assert len(outbox) == 0 and outbox.pending_bytes == 0
    assert calls == [4]  # three queued, one refused
    assert await outbox.get_batch() == []


def test_overflow_by_bytes() -> None:
    outbox = Outbox(100, 10)
    assert outbox.put("a", 6)
    assert outbox.put("b", 4)
    assert outbox.put("c", 1) is False
    assert outbox.overflowed


async def test_close_wakes_a_waiting_writer_without_overflow() -> None:
    calls: list[int] = []
    outbox = Outbox(10, 10, calls.append)
    getter = asyncio.ensure_future(outbox.get_batch())
    await asyncio.sleep(0)
    outbox.close()
    assert await asyncio.wait_for(getter, 1) == []
    assert outbox.put("late", 1) is False
    assert not outbox.overflowed and calls == []
