"""Tier 1: join/leave events coalesced per topic (megaphone.engine.joinleave), on a real event
loop."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from django.test import override_settings

from megaphone.engine.joinleave import JoinLeave
from tests.conftest import timeout

WINDOW = 0.05


class Watcher:
    """What a topic's watchers would receive: the frames published on its presence topic."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, Any]] = []
        self._published = asyncio.Condition()

    async def publish(self, topic: str, text: str) -> None:
        event = json.loads(text)
        async with self._published:
            self.events.append((event["type"], event["client"], event["info"]))
            self._published.notify_all()

    async def next(self, count: int) -> list[tuple[str, str, Any]]:
        """The next ``count`` events published."""
        start = len(self.events)
        async with self._published:
            await asyncio.wait_for(
                self._published.wait_for(lambda: len(self.events) >= start + count),
                timeout(5),
            )
        return self.events[start : start + count]


def entry(client: str, info: Any = None) -> dict[str, Any]:
    return {"client": client, "user": None, "info": info}


@override_settings(MEGAPHONE={"JOIN_LEAVE_INTERVAL": WINDOW})
async def test_a_quiet_topic_sends_at_once_then_only_net_changes_per_window() -> None:
    watcher = Watcher()
    join_leave = JoinLeave(watcher.publish)
    join_leave.announce("join", "t", entry("a"))
    assert await watcher.next(1) == [("join", "a", None)]

    for _ in range(100):  # churn within the window: a joins and leaves, b joins and leaves
        join_leave.announce("leave", "t", entry("a"))
        join_leave.announce("join", "t", entry("a"))
        join_leave.announce("join", "t", entry("b"))
        join_leave.announce("leave", "t", entry("b"))
    join_leave.announce("join", "t", entry("c"))
    join_leave.announce("leave", "t", entry("d"))
    assert await watcher.next(2) == [("join", "c", None), ("leave", "d", None)]
    join_leave.stop()


@override_settings(MEGAPHONE={"JOIN_LEAVE_INTERVAL": WINDOW})
async def test_a_client_back_with_other_info_is_sent_as_a_leave_then_a_join() -> None:
    watcher = Watcher()
    join_leave = JoinLeave(watcher.publish)
    join_leave.announce("join", "t", entry("a", {"n": 1}))
    await watcher.next(1)
    join_leave.announce("leave", "t", entry("a", {"n": 1}))
    join_leave.announce("join", "t", entry("a", {"n": 2}))
    assert await watcher.next(2) == [("leave", "a", {"n": 1}), ("join", "a", {"n": 2})]
    join_leave.stop()
