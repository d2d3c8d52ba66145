"""Tier 1: the dashboard's figures of one worker: its own rates over its own clock, the
application's traffic and topics apart from Megaphone's own."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Iterator

import pytest

from megaphone.conf import get_config
from megaphone.core.message import Message
from megaphone.engine.node import Node, history_limits, raise_gc_threshold, start_node
from megaphone.engine.stats import STATS_HISTORY, STATS_TOPIC, RateMeter, snapshot
from megaphone.protocol.schema import PRESENCE_PREFIX


class Recorder:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def deliver(self, message: Message) -> None:
        self.messages.append(message)


def test_rates_are_what_the_counters_gained_over_the_time_that_really_passed() -> None:
    meter = RateMeter(intervals=2)
    assert meter.read(100.0, {"published": 0}) == ({"published": 0.0}, 0.0)
    assert meter.read(102.0, {"published": 40}) == ({"published": 20.0}, 2.0)
    # a late tick (3 s instead of 2) with the same steady 20/s is still 20/s
    assert meter.read(105.0, {"published": 100}) == ({"published": 20.0}, 5.0)
    # the oldest reading leaves the window: rates over the last two intervals only
    assert meter.read(107.0, {"published": 100}) == ({"published": 12.0}, 5.0)


@pytest.fixture
async def node() -> AsyncIterator[Node]:
    node = await start_node(dashboard=False)
    yield node
    await node.stop()


async def test_the_figures_count_the_application_and_list_internal_topics_apart(
    node: Node,
) -> None:
    readers = [Recorder(), Recorder()]
    for reader in readers:
        await node.subscribe("unit-dashboard.news", reader)
    page, joins = Recorder(), Recorder()
    await node.subscribe(STATS_TOPIC, page)
    await node.subscribe(f"{PRESENCE_PREFIX}unit-dashboard.news", joins)
    meter = RateMeter()
    meter.read(0.0, {"published": 0, "delivered": 0})
    for text in ("one", "two", "three"):
        await node.publish("unit-dashboard.news", text)
    await node.publish(STATS_TOPIC, "{}")
    await node.publish(f"{PRESENCE_PREFIX}unit-dashboard.news", "{}")
    assert [len(r.messages) for r in (*readers, page, joins)] == [3, 3, 1, 1]
    assert (node.traffic.published, node.traffic.delivered) == (3, 6)
    figures = snapshot(node, meter, 2.0)
    assert (figures["published"], figures["delivered"]) == (3, 6)
    assert (figures["topics"], figures["subscriptions"]) == (1, 2)
    assert figures["busiest"] == [{"topic": "unit-dashboard.news", "subscribers": 2}]
    internal = figures["internal"]
    assert isinstance(internal, list)
    assert sorted(t["topic"] for t in internal) == [
        f"{PRESENCE_PREFIX}unit-dashboard.news",
        STATS_TOPIC,
    ]


def test_the_stats_topic_keeps_ten_minutes_of_history_whatever_the_settings() -> None:
    assert history_limits(STATS_TOPIC) == STATS_HISTORY == (5000, 600.0)


@pytest.fixture
def gc_threshold() -> Iterator[None]:
    saved = gc.get_threshold()
    yield
    gc.set_threshold(*saved)


@pytest.mark.usefixtures("gc_threshold")
async def test_a_serving_node_raises_the_collectors_first_threshold_never_lowers_it() -> None:
    gc.set_threshold(700, 10, 10)
    node = await start_node(dashboard=False)  # serves no client: Python's own threshold
    await node.stop()
    assert gc.get_threshold() == (700, 10, 10)
    node = await start_node()
    await node.stop()
    assert gc.get_threshold() == (get_config().GC_THRESHOLD, 10, 10)
    raise_gc_threshold(100)
    raise_gc_threshold(0)
    assert gc.get_threshold() == (get_config().GC_THRESHOLD, 10, 10)
