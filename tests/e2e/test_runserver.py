"""Tier 3: the development servers. ``manage.py runserver`` (with ``megaphone`` first in
``INSTALLED_APPS``) and ``manage.py serve --reload`` serve WebSockets and static files, and a
change to the project's code restarts them: the new process serves the new code."""

from __future__ import annotations

import asyncio
import os
import shutil
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import websockets
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from tests.conftest import ROOT, ServerProcess, free_port, launch, timeout

COMMANDS: dict[str, Callable[[int], list[str]]] = {
    "runserver": lambda port: ["runserver", f"127.0.0.1:{port}"],
    "serve --reload": lambda port: ["serve", "--reload", "--port", str(port)],
}


@pytest.fixture(params=COMMANDS)
def dev_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[ServerProcess, Path]]:
    """The command, run in a copy of the example project (so that the test may edit it), with
    ``DEBUG`` on; yields the server and the copy."""
    project = tmp_path / "project"
    shutil.copytree(
        ROOT / "example", project, ignore=shutil.ignore_patterns("__pycache__", "*.sqlite3")
    )
    port = free_port()
    command = [sys.executable, str(project / "manage.py"), *COMMANDS[request.param](port)]
    server = launch(command, tmp_path, port, {"DJANGO_DEBUG": "1"}, cwd=project)
    yield server, project
    server.stop()


async def publish_refused(server: ServerProcess, topic: str) -> bool | None:
    """Publish once on the raw endpoint of ``topic``: False if it came back, True if the server
    closed with 4403 (clients may not publish there), None if no server answered."""
    try:
        async with websockets.connect(f"{server.ws_url}/ws/broadcast/{topic}/") as client:
            await client.send("may I?")
            try:
                return await asyncio.wait_for(client.recv(), timeout(5)) != "may I?"
            except ConnectionClosed as closed:
                return closed.rcvd is not None and closed.rcvd.code == 4403
    except (OSError, InvalidHandshake):
        return None  # restarting: nothing listens yet, or the old process is going


async def test_it_serves_websockets_and_static_files_and_reloads_on_a_change(
    dev_server: tuple[ServerProcess, Path],
) -> None:
    server, project = dev_server
    url = f"{server.ws_url}/ws/broadcast/"
    async with websockets.connect(url) as a, websockets.connect(url) as b:
        await a.send("served by the development server")
        for client in (a, b):
            got = await asyncio.wait_for(client.recv(), timeout(5))
            assert got == "served by the development server"
    static = f"{server.http_url}/static/megaphone/megaphone.js"
    with urllib.request.urlopen(static, timeout=timeout(5)) as response:
        assert response.status == 200
    assert await publish_refused(server, "reloaded.news") is False

    settings = project / "example" / "settings.py"
    with settings.open("a") as file:
        file.write('\nMEGAPHONE["TOPICS"] = {"reloaded.*": {"publish": False}}\n')
    deadline = time.monotonic() + timeout(30)
    while await publish_refused(server, "reloaded.news") is not True:
        assert time.monotonic() < deadline, f"no reload:\n{server.log()}"
        # The reloader sees a change against the times it recorded on its first scan, which
        # may come after the write: touching the file again until it reloads is no race.
        os.utime(settings)
        await asyncio.sleep(0.2)
    assert server.process.poll() is None  # the same command, a new server process
    assert "Traceback" not in server.log()
