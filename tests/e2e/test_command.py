"""Tier 3: ``manage.py megaphone`` as a process of its own, next to a real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
import websockets

from megaphone.testing import unique
from tests.conftest import ROOT, ServerProcess, free_port, timeout
from tests.redis_server import RedisServer

MANAGE = [sys.executable, str(ROOT / "example" / "manage.py"), "megaphone"]


def megaphone(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if k != "REDIS_URL"}
    full_env.update({"DJANGO_SETTINGS_MODULE": "example.settings", **(env or {})})
    return subprocess.run(
        [*MANAGE, *args], env=full_env, capture_output=True, text=True, timeout=timeout(60)
    )


@pytest.mark.parametrize(
    "args", [("publish", "broadcast", "x"), ("tail", "broadcast"), ("history", "broadcast")]
)
def test_with_the_memory_backend_the_command_refuses_and_says_why(args: tuple[str, ...]) -> None:
    result = megaphone(*args)
    assert result.returncode == 1 and result.stdout == ""
    assert "in-memory backend does not cross processes" in result.stderr
    assert "REDIS_URL" in result.stderr


async def test_with_redis_publish_reaches_the_server_and_tail_sees_the_server(
    server_factory: Callable[..., ServerProcess], redis_server: RedisServer
) -> None:
    topic = unique("cmd")
    env = {"REDIS_URL": redis_server.url}
    server = server_factory(env=env)
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/") as client:
        result = await asyncio.to_thread(megaphone, "publish", topic, "from the command", env=env)
        assert result.returncode == 0, result.stderr
        offset = int(result.stdout)
        assert await asyncio.wait_for(client.recv(), timeout(5)) == "from the command"
        tail = await asyncio.create_subprocess_exec(
            *MANAGE,
            "tail",
            topic,
            "--since",
            str(offset),
            "--count",
            "1",
            "--timeout",
            "20",
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "example.settings", **env},
            stdout=asyncio.subprocess.PIPE,
        )
        # No wait for the tail process to subscribe: with --since it reads what it missed from
        # history, so the message reaches it once, whether it is sent before or after that.
        await client.send("from a client")
        out, _ = await asyncio.wait_for(tail.communicate(), timeout(30))
        assert tail.returncode == 0
        assert out.decode() == f"#{offset + 1} from a client\n"
        history = await asyncio.to_thread(megaphone, "history", topic, env=env)
        assert history.stdout == f"#{offset} from the command\n#{offset + 1} from a client\n"


async def test_tail_url_follows_a_server_over_its_protocol_endpoint_whatever_the_backend(
    server: ServerProcess,
) -> None:
    """``tail --url``: a client of the server (memory backend here), not of the backend."""
    topic = unique("cmd")
    async with websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/") as client:
        await client.send("before")
        await client.send(b"\x00\x01")
        assert [await asyncio.wait_for(client.recv(), timeout(5)) for _ in range(2)]
        tail = await asyncio.create_subprocess_exec(
            *MANAGE,
            *("tail", topic, "--since", "0", "--count", "3", "--timeout", "30"),
            *("--url", f"{server.ws_url}/ws/connect/"),
            env={**os.environ, "DJANGO_SETTINGS_MODULE": "example.settings"},
            stdout=asyncio.subprocess.PIPE,
        )
        assert tail.stdout is not None
        recovered = [await asyncio.wait_for(tail.stdout.readline(), timeout(30)) for _ in range(2)]
        assert recovered == [b"#1 before\n", b"#2 (binary, base64) AAE=\n"]
        await client.send('{"a": 1}')  # the tail is subscribed: it recovered with since
        out, _ = await asyncio.wait_for(tail.communicate(), timeout(30))
        assert tail.returncode == 0
        assert out.decode() == '#3 {"a": 1}\n'


def test_tail_url_of_a_server_that_is_not_there_is_a_command_error() -> None:
    result = megaphone("tail", "t", "--url", f"ws://127.0.0.1:{free_port()}/ws/connect/")
    assert result.returncode == 1 and result.stdout == ""
    assert "could not connect (1006 abnormal)" in result.stderr
