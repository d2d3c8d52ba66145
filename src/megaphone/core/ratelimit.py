"""A token bucket: the rate limits of a connection (publishing, subscribing) and of an HTTP API
key. Pure logic, clock injectable."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    """Allows ``rate`` events per second on average and bursts of up to ``burst`` at once.

    A ``rate`` of 0 disables the limit: every event is allowed.
    """

    __slots__ = ("_stamp", "_tokens", "burst", "clock", "rate")

    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = max(burst, 1.0)
        self.clock = clock
        self._tokens = self.burst
        self._stamp = clock()

    def allow(self) -> bool:
        """Take one token if there is one; False means over the limit."""
        if not self.rate:
            return True
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= 1.0:
            self._tokens -= 1.0
            return True
        return False

    def take(self, n: int) -> float:
        """Take ``n`` tokens at once (a batch of ``n`` messages) and return 0, or take none and
        return the seconds to wait until there are enough (at most ``burst`` are ever needed:
        a batch larger than the burst goes through once the bucket is full)."""
        if not self.rate:
            return 0.0
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        if self._tokens >= min(n, self.burst):
            self._tokens = max(0.0, self._tokens - n)
            return 0.0
        return (min(n, self.burst) - self._tokens) / self.rate
