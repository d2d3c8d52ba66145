"""Tier 1: the bounded outbox and the slow-client policy."""

from __future__ import annotations

from megaphone.core.outbox import Outbox


def test_take_batch_returns_everything_queued_in_order_then_nothing() -> None:
    outbox = Outbox(10, 1000)
    for i in range(3):
        assert outbox.put(i, 1)
    assert outbox.take_batch() == [0, 1, 2]
    assert len(outbox) == 0 and outbox.pending_bytes == 0
    assert outbox.take_batch() == []


def test_overflow_by_count_closes_once_and_drops_everything() -> None:
    calls: list[int] = []
    outbox = Outbox(3, 1000, calls.append)
    assert all(outbox.put(i, 1) for i in range(3))
    assert outbox.put(3, 1) is False
    assert outbox.put(4, 1) is False
    assert outbox.overflowed and outbox.closed
    assert len(outbox) == 0 and outbox.pending_bytes == 0
    assert calls == [4]  # three queued, one refused
    assert outbox.take_batch() == []


def test_overflow_by_bytes() -> None:
    outbox = Outbox(100, 10)
    assert outbox.put("a", 6)
    assert outbox.put("b", 4)
    assert outbox.put("c", 1) is False
    assert outbox.overflowed


def test_close_drops_what_is_queued_and_refuses_later_puts_without_overflow() -> None:
    calls: list[int] = []
    outbox = Outbox(10, 10, calls.append)
    assert outbox.put("early", 1)
    outbox.close()
    assert outbox.take_batch() == []
    assert outbox.put("late", 1) is False
    assert not outbox.overflowed and calls == []
