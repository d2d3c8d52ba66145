"""The live dashboard: a staff-only page fed over Megaphone's own WebSocket.

Every worker process publishes a snapshot of its figures on the internal topic
:data:`STATS_TOPIC` every ``DASHBOARD_INTERVAL`` seconds (0 turns it off): its connections, its
message counters, and its busiest topics with their subscriber counts. The page subscribes to that
topic with megaphone.js (``/ws/connect/``), keeps the latest snapshot of each worker, adds them up
and draws the last minutes. The default permission policy lets only staff subscribe to
``_megaphone.*`` topics, and the page itself requires a staff login.
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
from typing import TYPE_CHECKING

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from prometheus_client import REGISTRY

from .backends import BackendUnavailable
from .logs import get_logger

if TYPE_CHECKING:
    from .node import Node

logger = get_logger("megaphone.dashboard")

STATS_TOPIC = "_megaphone.stats"
BUSIEST = 10
WORKER = f"{socket.gethostname()}:{os.getpid()}"


def _sample(name: str) -> int:
    return int(REGISTRY.get_sample_value(name) or 0)


def snapshot(node: Node) -> dict[str, object]:
    """This worker's figures now: cumulative counters, so the page can derive rates."""
    topics = node.hub.topics()
    busiest = sorted(topics.items(), key=lambda item: item[1], reverse=True)[:BUSIEST]
    return {
        "worker": WORKER,
        "connections": _sample("megaphone_connections"),
        "topics": len(topics),
        "subscriptions": sum(topics.values()),
        "published": _sample("megaphone_messages_published_total"),
        "delivered": _sample("megaphone_deliveries_total"),
        "busiest": [{"topic": topic, "subscribers": count} for topic, count in busiest],
    }


async def publish_stats(node: Node, interval: float) -> None:
    """Publish :func:`snapshot` on :data:`STATS_TOPIC` every ``interval`` seconds, forever."""
    while True:
        await asyncio.sleep(interval)
        try:
            await node.publish(STATS_TOPIC, json.dumps(snapshot(node), separators=(",", ":")))
        except BackendUnavailable as exc:
            logger.warning("dashboard stats not published: %s", exc)


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "megaphone/dashboard.html", {"stats_topic": STATS_TOPIC})
