"""Broadcast peer built on the `websockets` library and its broadcast() helper.

ws://HOST:PORT/ws/broadcast/<topic>/ (or /ws/broadcast/): every frame a client sends goes to every
client of the topic, the sender included, as the same text or bytes. Benchmark only.
"""

import argparse
import asyncio
import re
from collections import defaultdict

from websockets.asyncio.server import ServerConnection, broadcast, serve

PATH = re.compile(r"^/ws/broadcast/(?:([\w.-]+)/)?$")
topics: dict[str, set[ServerConnection]] = defaultdict(set)


async def handler(ws: ServerConnection) -> None:
    m = PATH.match(ws.request.path if ws.request else "")
    if m is None:
        await ws.close(1008, "unknown path")
        return
    topic = m.group(1) or "broadcast"
    members = topics[topic]
    members.add(ws)
    try:
        async for message in ws:
            broadcast(members, message)
    finally:
        members.discard(ws)
        if not members:
            topics.pop(topic, None)


async def main(host: str, port: int) -> None:
    async with serve(
        handler,
        host,
        port,
        compression=None,
        ping_interval=None,
        max_size=2**20,
        backlog=4096,
    ) as server:
        await server.serve_forever()


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(main(args.host, args.port))
