"""Tier 3: ``manage.py megaphone`` and ``publish()`` never pretend, as processes of their own.

``topics`` lists what every worker of every server listens to, over a private Redis; a command
that finds nothing says so, and one that cannot answer exits with status 1; ``publish()`` in a
process that serves no clients, on the in-memory backend, raises instead of returning an offset.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import pytest
from websockets.sync.client import ClientConnection, connect

from megaphone.testing import unique
from tests.conftest import ROOT, ServerProcess, timeout
from tests.e2e.test_command import megaphone
from tests.redis_server import RedisServer


@contextmanager
def listeners(server: ServerProcess, topics: list[str]) -> Iterator[list[ClientConnection]]:
    """One raw client per topic, each connected (so subscribed: the handshake completes once the
    worker's subscription is confirmed by the backend)."""
    with ExitStack() as stack:
        yield [
            stack.enter_context(
                connect(f"{server.ws_url}/ws/broadcast/{topic}/", open_timeout=timeout(10))
            )
            for topic in topics
        ]


def test_topics_lists_every_worker_of_every_server_over_redis(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    env = {"REDIS_URL": redis_server.url}
    nothing = megaphone("topics", env=env)
    assert nothing.returncode == 0 and nothing.stdout == ""
    assert "no topic has a subscriber on any worker" in nothing.stderr

    two_workers = server_factory(workers=2, env=env)
    other_machine = server_factory(env=env)
    spread = [unique("spread") for _ in range(6)]
    shared = unique("shared")
    with (
        listeners(two_workers, [*spread, shared]),
        listeners(other_machine, [shared, shared]),
    ):
        result = megaphone("topics", env=env)
    assert result.returncode == 0, result.stderr
    listed = dict(line.split("\t") for line in result.stdout.splitlines())
    assert set(spread) | {shared} <= set(listed)
    assert all(listed[topic] == "1" for topic in spread)  # one worker listens to each
    assert int(listed[shared]) >= 2  # a worker of each server


def test_history_limit_gives_the_latest_and_empty_answers_say_so(
    redis_server: RedisServer,
) -> None:
    env = {"REDIS_URL": redis_server.url}
    topic = unique("history")
    empty = megaphone("history", topic, env=env)
    assert empty.returncode == 0 and empty.stdout == ""
    assert f"no message in the history of {topic}" in empty.stderr
    for n in range(5):
        assert megaphone("publish", topic, f"m{n}", env=env).returncode == 0
    latest = megaphone("history", topic, "--limit", "2", env=env)
    assert latest.stdout == "#4 m3\n#5 m4\n"


def test_presence_on_a_topic_without_presence_fails_and_says_how_to_turn_it_on(
    redis_server: RedisServer,
) -> None:
    result = megaphone("presence", unique("no-presence"), env={"REDIS_URL": redis_server.url})
    assert result.returncode == 1 and result.stdout == ""
    assert "keeps no presence: turn it on with MEGAPHONE['TOPICS']" in result.stderr


@pytest.mark.parametrize("args", [("topics",), ("presence", "broadcast")])
def test_with_the_memory_backend_topics_and_presence_fail_and_say_why(
    args: tuple[str, ...],
) -> None:
    result = megaphone(*args)
    assert result.returncode == 1 and result.stdout == ""
    assert "in-memory backend does not cross processes" in result.stderr


def test_publish_from_manage_py_shell_on_the_memory_backend_raises_no_server_here() -> None:
    code = "import megaphone; megaphone.publish('broadcast', 'from the shell')"
    result = subprocess.run(
        [sys.executable, str(ROOT / "example" / "manage.py"), "shell", "-c", code],
        env={"DJANGO_SETTINGS_MODULE": "example.settings", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=timeout(60),
    )
    assert result.returncode != 0
    assert (
        "megaphone.engine.publishing.NoServerHere: cannot publish on 'broadcast'" in result.stderr
    )
    assert "use the Redis backend" in result.stderr
