"""Event-based waits for tests: each wakes on an event, never on a timer, and is bounded.

A test that sleeps "long enough" for something to happen is slow when the machine is idle and
flaky when it is loaded. These helpers wait for the thing itself; the timeout only bounds a
wait that would otherwise hang, and is scaled by ``MEGAPHONE_TEST_TIMEOUT_FACTOR`` (set it higher
on a loaded CI machine).
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def scaled(seconds: float) -> float:
    """``seconds`` multiplied by ``MEGAPHONE_TEST_TIMEOUT_FACTOR`` (default 1)."""
    return seconds * float(os.environ.get("MEGAPHONE_TEST_TIMEOUT_FACTOR", "1"))


def unique(prefix: str = "t") -> str:
    """A topic name no other test uses: ``prefix`` and 8 random hex digits."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


class Signal:
    """Something that changes, and the tasks waiting for it to reach a state.

    The code under observation (a test double, a callback) calls :meth:`notify` whenever the
    state may have changed; :meth:`wait_until` checks its condition then, and only then.
    """

    def __init__(self) -> None:
        self._waiters: set[asyncio.Future[None]] = set()

    def notify(self) -> None:
        """The state may have changed: wake every waiter to check again (a plain function,
        so callbacks can call it; from the event loop's thread)."""
        waiters, self._waiters = self._waiters, set()
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def wait_until(self, condition: Callable[[], bool], timeout: float = 5) -> None:
        """Return once ``condition()`` is true, checked now and after each :meth:`notify`.

        Raises :class:`TimeoutError` after ``scaled(timeout)`` seconds.
        """
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(scaled(timeout)):
            while not condition():
                waiter = loop.create_future()
                self._waiters.add(waiter)
                try:
                    await waiter
                finally:
                    self._waiters.discard(waiter)


class Collected(list[T]):
    """A list to hand a callback (``backend.start(received.append)``, an ``on_message``) that
    wakes its waiters at each append: ``await received.wait_for(3)`` returns once it holds 3."""

    def __init__(self, changed: Signal | None = None) -> None:
        """``changed``: a signal shared with other lists (one wait over several of them)."""
        super().__init__()
        self.changed = Signal() if changed is None else changed

    def append(self, item: T) -> None:
        super().append(item)
        self.changed.notify()

    async def wait_for(self, count: int, timeout: float = 5) -> None:
        """Return once at least ``count`` items are in; :class:`TimeoutError` after
        ``scaled(timeout)`` seconds."""
        await self.changed.wait_until(lambda: len(self) >= count, timeout)


async def wait_until(
    condition: Callable[[], bool], *, changed: asyncio.Event, timeout: float = 5
) -> None:
    """Return once ``condition()`` is true, checked now and each time ``changed`` is set.

    ``changed`` is cleared before each check, so whoever changes the state only sets it. Raises
    :class:`TimeoutError` after ``scaled(timeout)`` seconds.
    """
    async with asyncio.timeout(scaled(timeout)):
        while True:
            changed.clear()
            if condition():
                return
            await changed.wait()
