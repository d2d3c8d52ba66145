"""Class 3: one decision per disclosure (docs/security.md).

A topic anyone may subscribe to, whose history and presence only staff may see: every path that
reveals the history (recovery with ``since``, the ``history`` op, the HTTP API) or the presence
(the ``presence`` op, join/leave events, the HTTP API's presence and counts, the dashboard's
stats topic) refuses an anonymous client and serves a staff one. Two workers over a private
Redis, so that events and entries cross processes. HTTP API keys are decided by their own topic
patterns (:class:`megaphone.server.permissions.Service`): one key granted the topics, one not.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import pytest
from websockets.sync.client import connect

from megaphone.testing import unique
from tests.conftest import ROOT, ServerProcess, create_superuser, start_server, timeout
from tests.e2e.rawws import RawClient
from tests.e2e.test_logout import Browser

from .protocol_client import Client

ROOM_KEY = "room-key-0123456789abcdef"  # granted the room-* topics
OTHER_KEY = "other-key-0123456789abcdef"  # granted other topics only
SETTINGS = {
    "PERMISSIONS": [
        {
            "topics": "*",
            "subscribe": "anyone",
            "publish": "anyone",
            "history": "staff",
            "presence": "staff",
        }
    ],
    "TOPICS": {"room-*": {"presence": True, "join_leave": True}},
    "API_KEYS": {ROOM_KEY: ["room-*"], OTHER_KEY: ["elsewhere.*"]},
    "DASHBOARD_INTERVAL": 0.2,
}
STATS_TOPIC = "_megaphone.stats"


@dataclass
class World:
    server: ServerProcess
    staff: Browser
    sockets: ExitStack

    def anonymous(self) -> Client:
        return self._open(f"{self.server.ws_url}/ws/connect/")

    def staff_client(self) -> Client:
        """A connection of the superuser ``alice`` (a connection token of her session)."""
        return self._open(f"{self.server.ws_url}/ws/connect/?token={self.staff.token()}")

    def _open(self, url: str) -> Client:
        return Client(self.sockets.enter_context(connect(url)))

    def api(self, key: str, path: str) -> tuple[int, Any]:
        request = urllib.request.Request(
            f"{self.server.http_url}/api/{path}", headers={"Authorization": f"Bearer {key}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout(10)) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as error:
            return error.code, json.loads(error.read())

    def room(self, messages: int = 0) -> tuple[str, str]:
        """A new room topic with ``messages`` messages in its history: (topic, epoch)."""
        topic, epoch = unique("room"), ""
        publisher = self.anonymous()
        for n in range(messages):
            epoch = publisher.request("publish", topic=topic, data=f"m{n}")["result"]["epoch"]
        return topic, epoch


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    """Two workers over a private Redis with :data:`SETTINGS`, and the superuser ``alice``
    logged in."""
    from tests.redis_server import REDIS_SERVER, RedisServer

    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    directory = tmp_path_factory.mktemp("disclosure")
    redis = RedisServer(directory)
    redis.start()
    env = {
        "DJANGO_SETTINGS_MODULE": "tests.e2e.hardening_settings",
        "PYTHONPATH": str(ROOT),
        "MEGAPHONE_OVERRIDES": json.dumps({**SETTINGS, "BACKEND": redis.url}),
    }
    server = start_server(directory, workers=2, env=env)
    try:
        with ExitStack() as sockets:
            world = World(server, Browser(server), sockets)
            create_superuser(server, "alice")
            world.staff.log_in("alice")
            yield world
        assert "Traceback" not in server.log()
    finally:
        server.stop()
        redis.stop()


def test_recovery_with_since_needs_the_history_right(world: World) -> None:
    topic, epoch = world.room(messages=3)
    since = {"offset": 0, "epoch": epoch}

    anonymous = world.anonymous()
    reply = anonymous.request("subscribe", topic=topic, since=since)
    assert reply["type"] == "reply", reply  # subscribed: it may read the live messages
    assert reply["result"]["recovered"] is False
    assert reply["result"]["missed"] == 0
    anonymous.request("ping")
    assert not [f for f in anonymous.frames if f["type"] == "message"]

    staff = world.staff_client()
    reply = staff.request("subscribe", topic=topic, since=since)
    assert reply["result"]["recovered"] is True
    assert reply["result"]["missed"] == 3
    recovered = [staff.until(lambda f: f["type"] == "message")["data"] for _ in range(3)]
    assert recovered == ["m0", "m1", "m2"]


def test_the_history_op_needs_the_history_right(world: World) -> None:
    topic, _ = world.room(messages=2)
    refused = world.anonymous().request("history", topic=topic)
    assert refused["type"] == "error"
    assert refused["code"] == "forbidden"
    allowed = world.staff_client().request("history", topic=topic)
    assert [m["data"] for m in allowed["result"]["messages"]] == ["m0", "m1"]


def test_the_http_history_needs_a_key_granted_the_topic(world: World) -> None:
    topic, _ = world.room(messages=2)
    status, body = world.api(OTHER_KEY, f"topics/{topic}/history")
    assert (status, body["error"]["code"]) == (403, "forbidden_topic")
    status, body = world.api(ROOM_KEY, f"topics/{topic}/history")
    assert status == 200
    assert [m["data"] for m in body["messages"]] == ["m0", "m1"]


def test_the_presence_op_needs_the_presence_right(world: World) -> None:
    topic, _ = world.room()
    staff = world.staff_client()
    staff.request("subscribe", topic=topic, info={"name": "Alice"})

    refused = world.anonymous().request("presence", topic=topic)
    assert refused["type"] == "error"
    assert refused["code"] == "forbidden"
    allowed = staff.request("presence", topic=topic)["result"]
    assert allowed["count"] == 1
    assert allowed["clients"] == [
        {"client": staff.client, "user": "alice", "info": {"name": "Alice"}}
    ]


def test_join_and_leave_events_need_the_presence_right(world: World) -> None:
    topic, _ = world.room()
    anonymous_watcher, staff_watcher = world.anonymous(), world.staff_client()
    for watcher in (anonymous_watcher, staff_watcher):
        assert watcher.request("subscribe", topic=topic)["type"] == "reply"
    joiner = world.staff_client()
    joiner.request("subscribe", topic=topic, info={"name": "Alice"})

    join = staff_watcher.until(lambda f: f["type"] == "join" and f["client"] == joiner.client)
    assert (join["user"], join["info"]) == ("alice", {"name": "Alice"})
    joiner.request("publish", topic=topic, data="after the join")
    joiner.request("unsubscribe", topic=topic)
    leave = staff_watcher.until(lambda f: f["type"] == "leave" and f["client"] == joiner.client)
    assert leave["user"] == "alice"

    # The anonymous watcher got the live message published after the join, and no event at all.
    anonymous_watcher.until(lambda f: f["type"] == "message" and f["data"] == "after the join")
    anonymous_watcher.request("ping")
    assert not [f for f in anonymous_watcher.frames if f["type"] in ("join", "leave")]


def test_http_presence_and_counts_need_a_key_granted_the_topic(world: World) -> None:
    """(``topics`` counts the answering worker's subscribers: only the refusal is certain.)"""
    topic, _ = world.room()
    subscriber = world.anonymous()
    subscriber.request("subscribe", topic=topic)
    subscriber.request("ping")  # answered once the subscribe has added its presence entry

    status, body = world.api(OTHER_KEY, f"topics/{topic}/presence")
    assert (status, body["error"]["code"]) == (403, "forbidden_topic")
    status, body = world.api(OTHER_KEY, "topics")
    assert topic not in [entry["topic"] for entry in body["topics"]]

    status, body = world.api(ROOM_KEY, f"topics/{topic}/presence")
    assert (status, body["count"]) == (200, 1)


def test_the_dashboard_stats_need_the_presence_right(world: World) -> None:
    """The stats topic carries every worker's busiest topics with their subscriber counts."""
    with RawClient(world.server.port) as raw:
        assert raw.handshake(f"/ws/broadcast/{STATS_TOPIC}/") == 403
    refused = world.anonymous().request("subscribe", topic=STATS_TOPIC)
    assert refused["type"] == "error"
    assert refused["code"] == "forbidden"

    url = f"{world.server.ws_url}/ws/broadcast/{STATS_TOPIC}/?token={world.staff.token()}"
    with connect(url) as staff:
        snapshot = json.loads(staff.recv(timeout=timeout(10)))
    assert "busiest" in snapshot
