"""Prometheus metrics: what Megaphone does, counted where it happens, exported at ``/metrics``.

Hot-path cost is kept to one increment per published message (deliveries are counted per
broadcast, not per client). Topic and subscription counts are read from the hubs at scrape time.

Each worker process counts its own. With several workers, scrape each one, or set
``PROMETHEUS_MULTIPROC_DIR`` (prometheus-client's multi-process mode) before the workers start.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from megaphone.core.hub import Hub

CONNECTIONS = Gauge(
    "megaphone_connections", "Open WebSocket connections.", multiprocess_mode="livesum"
)
CONNECTIONS_ACCEPTED = Counter("megaphone_connections_accepted", "WebSocket connections accepted.")
SSE_CONNECTIONS = Gauge(
    "megaphone_sse_connections", "Open Server-Sent Events streams.", multiprocess_mode="livesum"
)
SSE_CONNECTIONS_ACCEPTED = Counter(
    "megaphone_sse_connections_accepted", "Server-Sent Events streams opened."
)
HTTP_SESSIONS = Gauge(
    "megaphone_http_sessions",
    "Open sessions of the JSON protocol over HTTP (/sse/connect/).",
    multiprocess_mode="livesum",
)
HTTP_SESSIONS_ACCEPTED = Counter(
    "megaphone_http_sessions_accepted", "Sessions of the JSON protocol over HTTP opened."
)
CLOSES = Counter("megaphone_closes", "Connections closed by the server, by close code.", ["code"])
MESSAGES_PUBLISHED = Counter("megaphone_messages_published", "Messages accepted by the backend.")
DELIVERIES = Counter("megaphone_deliveries", "Messages handed to local subscribers.")
DROPS = Counter("megaphone_drops", "Frames dropped instead of sent, by reason.", ["reason"])
SLOW_DISCONNECTS = Counter(
    "megaphone_slow_consumer_disconnects", "Clients closed with 4408 for falling behind."
)
BACKEND_ERRORS = Counter("megaphone_backend_errors", "Backend calls that failed.", ["operation"])
REFUSALS = Counter("megaphone_refusals", "Handshakes and requests refused, by reason.", ["reason"])
HISTORY_EVICTIONS = Counter(
    "megaphone_history_evictions",
    "Messages evicted from the in-memory backend's history to stay under HISTORY_MAX_BYTES.",
)
FANOUT = Histogram(
    "megaphone_fanout_seconds",
    "Per event-loop turn that delivered messages: from the first frame held for the turn's "
    "direct writes to the last of them written (one write per connection).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
PUBLISH_TO_SEND = Histogram(
    "megaphone_publish_to_send_seconds",
    "From the backend accepting a message to this process handing it to its subscribers.",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)

_hubs: weakref.WeakSet[Hub] = weakref.WeakSet()


def track_hub(hub: Hub) -> None:
    """Count ``hub``'s topics and subscriptions at every scrape, for as long as it lives."""
    _hubs.add(hub)


class _HubCollector(Collector):
    def collect(self) -> Iterator[GaugeMetricFamily]:
        topics = subscriptions = 0
        for hub in list(_hubs):
            counts = hub.topics()
            topics += len(counts)
            subscriptions += sum(counts.values())
        yield GaugeMetricFamily("megaphone_topics", "Topics with local subscribers.", topics)
        yield GaugeMetricFamily(
            "megaphone_subscriptions", "Local topic subscriptions.", subscriptions
        )


REGISTRY.register(_HubCollector())


class _ReadAtScrape(Collector):
    def __init__(self, name: str, documentation: str, read: Callable[[], float]) -> None:
        self.name, self.documentation, self.read = name, documentation, read

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily(self.name, self.documentation, self.read())


def gauge_read_at_scrape(name: str, documentation: str, read: Callable[[], float]) -> None:
    """Export ``read()`` as the gauge ``name`` at every scrape (state kept elsewhere: nothing
    is counted on the hot path)."""
    REGISTRY.register(_ReadAtScrape(name, documentation, read))
