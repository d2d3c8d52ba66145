"""A small side-by-side of the ASGI servers Megaphone runs under (docs/asgi-server.md).

For each server: the example project on one process, N raw subscribers of one topic, one
protocol client (not subscribed) publishing M messages of 100 bytes as one burst; the server
CPU per delivery is the CPU time of the server's process tree (``/proc``) over the burst divided
by N x M, once every subscriber has received every message. Median of ``--repeat`` bursts.
Not part of ``make bench``; a run takes about a minute::

    .venv/bin/python bench/asgi_servers.py [--subscribers 200] [--messages 200] [--repeat 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import websockets

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import ASGI_SERVERS, start_asgi_server

TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and its descendants."""
    children = {pid}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) in children:
                children.add(int(entry.name))
    total = 0
    for child in children:
        try:
            fields = Path(f"/proc/{child}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / TICKS


async def burst(port: int, pid: int, subscribers: int, messages: int) -> float:
    """Server CPU µs per delivery of one burst."""
    url = f"ws://127.0.0.1:{port}"
    clients = [
        await websockets.connect(f"{url}/ws/broadcast/bench/", max_queue=None)
        for _ in range(subscribers)
    ]
    publisher = await websockets.connect(f"{url}/ws/connect/", max_queue=None)
    await publisher.recv()

    async def drain(client: websockets.ClientConnection) -> None:
        for _ in range(messages):
            await client.recv()

    before = cpu_seconds(pid)
    receiving = asyncio.gather(*(drain(client) for client in clients))
    for i in range(messages):
        data = f"{i} {time.time()} ".ljust(100, "x")
        await publisher.send(json.dumps({"op": "publish", "id": i, "topic": "bench", "data": data}))
    await asyncio.wait_for(receiving, 120)
    used = cpu_seconds(pid) - before
    for client in [*clients, publisher]:
        await client.close()
    return used / (subscribers * messages) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--subscribers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("servers", nargs="*", default=ASGI_SERVERS)
    args = parser.parse_args()
    env = {"DJANGO_SETTINGS_MODULE": "tests.e2e.hardening_settings", "PYTHONPATH": str(Path.cwd())}
    env["MEGAPHONE_OVERRIDES"] = json.dumps({"DASHBOARD_INTERVAL": 0, "PUBLISH_RATE": 0})
    print(f"{args.subscribers} subscribers x {args.messages} messages of 100 B, one process")
    for name in args.servers:
        with tempfile.TemporaryDirectory() as tmp:
            server = start_asgi_server(Path(tmp), name, env=env)
            try:
                runs = [
                    asyncio.run(
                        burst(server.port, server.process.pid, args.subscribers, args.messages)
                    )
                    for _ in range(args.repeat)
                ]
            finally:
                server.stop()
        print(
            f"{name:10} {statistics.median(runs):6.1f} µs server CPU per delivery "
            f"(runs: {', '.join(f'{r:.1f}' for r in runs)})",
            flush=True,
        )


if __name__ == "__main__":
    main()
