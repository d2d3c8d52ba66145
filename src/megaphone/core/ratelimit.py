"""A token bucket: the publish-rate limit of one connection. Pure logic, clock injectable."""

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
