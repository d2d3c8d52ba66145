"""Tier 3: the Redis backend's key layout against a real Redis Cluster (3 masters, 1 replica
each, private): what docs/deploy.md claims of it ("each topic's keys share a ``{topic}`` hash
slot, and each script touches one topic"). The backend itself does not run on a Cluster yet
(``redis+cluster://`` is refused); this is the ground a Cluster backend stands on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from megaphone.backends import redis as redis_backend
from tests.redis_server import REDIS_SERVER, ClusterSetup


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[ClusterSetup]:
    if REDIS_SERVER is None:
        pytest.skip("needs the redis-server binary")
    setup = ClusterSetup(tmp_path)
    yield setup
    setup.stop()


def run(cluster: ClusterSetup, script: str, topic: str, args: list[object]) -> list[Any]:
    """``script`` on ``topic``'s keys, on the master that owns their slot."""
    keys = redis_backend._keys(topic)
    with cluster.owner(keys[0]).client() as client:
        return client.eval(script, len(keys), *keys, *args)  # type: ignore[no-any-return]


@pytest.mark.slow
def test_the_publish_and_history_scripts_run_on_the_node_owning_the_topic(
    cluster: ClusterSetup,
) -> None:
    owners = set()
    for i in range(20):  # topics all over the slots, hence over the three masters
        topic = f"layout-{i}"
        owners.add(cluster.owner(redis_backend._keys(topic)[0]).port)
        for n in (1, 2):
            channel = f"megaphone:0:{{{topic}}}"
            offset, *_ = run(
                cluster,
                redis_backend._PUBLISH,
                topic,
                [100, 60_000, 120_000, "e0", channel, "t", "", f"m{n}"],
            )
            assert offset == n
        offset, _epoch, complete, entries = run(
            cluster, redis_backend._HISTORY, topic, [100, 60_000, 120_000, "e0", 0, -1]
        )
        assert (offset, complete, [e[1][5] for e in entries]) == (2, 1, [b"m1", b"m2"])
    assert len(owners) == 3


@pytest.mark.slow
def test_a_script_on_another_node_than_the_topics_is_refused(cluster: ClusterSetup) -> None:
    """The check above can fail: a node that does not own the slot refuses (MOVED)."""
    keys = redis_backend._keys("layout-elsewhere")
    owner = cluster.owner(keys[0])
    other = next(
        n for n in cluster.nodes if n is not owner and n.info("replication")["role"] == "master"
    )
    with other.client() as client, pytest.raises(redis.exceptions.MovedError):
        client.eval(redis_backend._HISTORY, 3, *keys, 100, 60_000, 120_000, "e0", 0, -1)
