"""The dashboard's figures: what every worker publishes about itself, for the live dashboard
(:mod:`megaphone.contrib.dashboard`).

Every worker process publishes a snapshot of its figures on the internal topic
:data:`STATS_TOPIC` every ``DASHBOARD_INTERVAL`` seconds (0 turns it off): its connections (of
every transport: WebSocket, SSE streams, HTTP sessions; their sum, and each apart under
``transports``), its subscriptions, its message rates, and its busiest topics with their
subscriber counts, the application's apart from Megaphone's own
(:func:`~megaphone.core.topics.is_internal`).

Rates are computed here, by each worker, from its own counters
(:class:`~megaphone.engine.node.Traffic`:
the application's messages, internal topics left out, so the dashboard does not count itself)
over its own clock: :class:`RateMeter` divides what the counters gained over the worker's last
:data:`RATE_INTERVALS` snapshots by the time that really passed between them. The page adds up
the latest rates of every worker it heard from within its last few intervals; it never takes a
difference between two workers' snapshots.

The stats topic keeps :data:`STATS_HISTORY` (the last ten minutes), so a page opened now reads
that history first and draws the last minutes at once, then goes live from where it ended. The
default permission policy lets only staff subscribe to ``_megaphone.*`` topics, and the page
itself requires a staff login.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from collections import deque
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY

from megaphone.backends import BackendUnavailable
from megaphone.core.logs import get_logger
from megaphone.core.topics import is_internal

if TYPE_CHECKING:
    from megaphone.engine.node import Node, Traffic

logger = get_logger(__name__)

STATS_TOPIC = "_megaphone.stats"
#: ``(size, ttl)`` of the stats topic's history: ten minutes, at most 5000 snapshots (ten
#: minutes of 8 workers at the default interval). Not a setting: the page draws ten minutes.
STATS_HISTORY = (5000, 600.0)
BUSIEST = 10
#: A worker's rates are averaged over its last this many intervals (10 s by default).
RATE_INTERVALS = 5
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _sample(name: str) -> int:
    return int(REGISTRY.get_sample_value(name) or 0)


class RateMeter:
    """Per-second rates of one worker's cumulative counters, over its own last readings.

    :meth:`read` takes the counters and the time (a monotonic clock) of one reading and returns
    what each counter gained per second since the oldest of the last ``intervals`` readings
    before it: over the time that really passed, so a late tick does not inflate a rate.
    """

    def __init__(self, intervals: int = RATE_INTERVALS) -> None:
        self._readings: deque[tuple[float, dict[str, int]]] = deque(maxlen=intervals + 1)

    def read(self, at: float, counters: dict[str, int]) -> tuple[dict[str, float], float]:
        """Record a reading; return the rates since the oldest one kept, and over how many
        seconds (0 and no time at the first reading)."""
        self._readings.append((at, dict(counters)))
        since, first = self._readings[0]
        elapsed = at - since
        if elapsed <= 0:
            return {name: 0.0 for name in counters}, 0.0
        return {name: (value - first[name]) / elapsed for name, value in counters.items()}, elapsed


def _counters(traffic: Traffic) -> dict[str, int]:
    return {"published": traffic.published, "delivered": traffic.delivered}


#: The gauge of open connections of each transport; a snapshot's ``connections`` is their sum.
TRANSPORT_GAUGES = {
    "websocket": "megaphone_connections",
    "sse": "megaphone_sse_connections",
    "http": "megaphone_http_sessions",
}


def snapshot(node: Node, meter: RateMeter, interval: float) -> dict[str, object]:
    """This worker's figures now, its rates read from ``meter`` (one reading per snapshot)."""
    counters = _counters(node.traffic)
    rates, window = meter.read(time.monotonic(), counters)
    topics = node.hub.topics()
    application = {topic: count for topic, count in topics.items() if not is_internal(topic)}
    internal = {topic: count for topic, count in topics.items() if is_internal(topic)}
    transports = {name: _sample(metric) for name, metric in TRANSPORT_GAUGES.items()}
    return {
        "worker": WORKER,
        "time": time.time(),
        "interval": interval,
        "connections": sum(transports.values()),
        "transports": transports,
        "topics": len(application),
        "subscriptions": sum(application.values()),
        **counters,
        "published_per_s": round(rates["published"], 3),
        "delivered_per_s": round(rates["delivered"], 3),
        "rate_window": round(window, 3),
        "busiest": _busiest(application),
        "internal": _busiest(internal),
    }


def _busiest(topics: dict[str, int]) -> list[dict[str, object]]:
    busiest = sorted(topics.items(), key=lambda item: item[1], reverse=True)[:BUSIEST]
    return [{"topic": topic, "subscribers": count} for topic, count in busiest]


async def publish_stats(node: Node, interval: float) -> None:
    """Publish :func:`snapshot` on :data:`STATS_TOPIC` every ``interval`` seconds, forever."""
    meter = RateMeter()
    meter.read(time.monotonic(), _counters(node.traffic))
    while True:
        await asyncio.sleep(interval)
        try:
            figures = snapshot(node, meter, interval)
            await node.publish(STATS_TOPIC, json.dumps(figures, separators=(",", ":")))
        except BackendUnavailable as exc:
            logger.warning("dashboard stats not published: %s", exc)
