"""Tier 3: ``manage.py megaphone`` as a process of its own, next to a real server."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable

import pytest
import websockets

from tests.conftest import ROOT, ServerProcess, timeout
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
    topic = f"cmd-{uuid.uuid4().hex[:8]}"
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
        await asyncio.sleep(timeout(1.5))  # the tail process starts and subscribes
        await client.send("from a client")
        out, _ = await asyncio.wait_for(tail.communicate(), timeout(30))
        assert tail.returncode == 0
        assert out.decode() == f"#{offset + 1} from a client\n"
        history = await asyncio.to_thread(megaphone, "history", topic, env=env)
        assert history.stdout == f"#{offset} from the command\n#{offset + 1} from a client\n"
