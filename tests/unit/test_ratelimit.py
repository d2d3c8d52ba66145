"""Tier 1: the token bucket behind the rate limits (publishing, subscribing, HTTP API keys)."""

from __future__ import annotations

import pytest

from megaphone.core.ratelimit import TokenBucket


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_burst_then_steady_rate() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20, burst=5, clock=clock)
    assert [bucket.allow() for _ in range(6)] == [True] * 5 + [False]
    clock.now += 0.05  # one token at 20/s
    assert bucket.allow() and not bucket.allow()
    clock.now += 10  # refills to the burst size, not beyond
    assert sum(bucket.allow() for _ in range(20)) == 5


def test_1000_per_second_against_20_per_second_is_mostly_refused() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=20, burst=20, clock=clock)
    allowed = 0
    for _ in range(1000):
        clock.now += 0.001
        allowed += bucket.allow()
    assert 39 <= allowed <= 41  # the burst of 20, plus 20 over the second


def test_zero_rate_disables_the_limit() -> None:
    bucket = TokenBucket(rate=0, burst=0)
    assert all(bucket.allow() for _ in range(10_000))


def test_a_bucket_takes_several_tokens_at_once_or_says_how_long_to_wait() -> None:
    clock = Clock()
    bucket = TokenBucket(rate=2, burst=5, clock=clock)
    assert bucket.take(3) == 0
    assert bucket.take(3) == pytest.approx(0.5)  # 2 left, 1 more at 2/s
    assert bucket.allow() and bucket.allow() and not bucket.allow()
    clock.now += 10
    assert bucket.take(8) == 0  # more than the burst: once the bucket is full
    assert bucket.take(1) == pytest.approx(0.5)
    assert TokenBucket(rate=0, burst=1, clock=clock).take(100) == 0
