"""Class 5 (join/leave half): subscribe/unsubscribe churn cannot flood a topic's watchers.

One client subscribes to and leaves a topic with join/leave events hundreds of times; a watcher
of the topic gets a bounded number of events (the topic's events are coalesced per window of
``JOIN_LEAVE_INTERVAL``, here longer than the test), and the ``presence`` op still tells the
truth at once.
"""

from __future__ import annotations

from collections.abc import Callable

from websockets.sync.client import connect

from tests.conftest import ServerProcess

from .protocol_client import Client

TOPIC = "room-churn"
CYCLES = 300


def test_churn_sends_a_watcher_a_bounded_number_of_events(
    attacked: Callable[..., ServerProcess],
) -> None:
    server = attacked(
        TOPICS={TOPIC: {"presence": True, "join_leave": True}},
        JOIN_LEAVE_INTERVAL=60,
        SUBSCRIBE_RATE=0,  # the churn goes past the subscribe rate limit on purpose
    )
    url = f"{server.ws_url}/ws/connect/"
    with connect(url) as watcher_socket, connect(url) as churner_socket:
        watcher, churner = Client(watcher_socket), Client(churner_socket)
        watcher.request("subscribe", topic=TOPIC)
        for _ in range(CYCLES):
            assert churner.request("subscribe", topic=TOPIC)["type"] == "reply"
            assert churner.request("unsubscribe", topic=TOPIC)["type"] == "reply"
        # One worker: the pong is queued behind every event published before it.
        watcher.request("ping")
        events = [f for f in watcher.frames if f["type"] in ("join", "leave")]
        # The watcher's own join went out at once and opened the window; the churn is held, and
        # nets out to nothing at the window's end.
        assert len(events) <= 2, f"{len(events)} join/leave events for {CYCLES} cycles"

        presence = watcher.request("presence", topic=TOPIC)["result"]
        assert [entry["client"] for entry in presence["clients"]] == [watcher.client]
        churner.request("subscribe", topic=TOPIC, info={"name": "Bob"})
        churner.request("ping")  # answered once the subscribe has added its presence entry
        presence = watcher.request("presence", topic=TOPIC)["result"]
        assert presence["count"] == 2
        assert {"client": churner.client, "user": None, "info": {"name": "Bob"}} in presence[
            "clients"
        ]
    assert "Traceback" not in server.log()
