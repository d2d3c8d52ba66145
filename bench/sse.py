"""SSE and the HTTP transport beside WebSocket on the same Megaphone server: `make bench-sse`.

For each transport, a fresh ``manage.py serve`` (one worker, in-memory backend), N idle clients on
one topic (``/sse/broadcast/<topic>/``, ``/ws/broadcast/<topic>/``, or ``http``: the JSON
protocol over HTTP, ``/sse/connect/`` subscribed by a POST), then one WebSocket
publisher sends a burst of M messages of ~100 bytes. Reported, per transport (medians over
``--repeat`` runs): server RSS per idle client (RSS with the N clients minus RSS before), server
CPU per delivery (CPU seconds of the server's processes during the burst / deliveries) and the
burst's deliveries per second. Every client must get every message once, in order (SSE: by the
event ids' offsets; WebSocket and HTTP: by the messages' sequence numbers), or the run fails
(exit 1).

The clients run in this process (asyncio), so only the server's CPU is counted; the client's own
ceiling shows as deliveries/s, not in CPU per delivery. Writes bench/results/sse-<UTC>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import websockets

from benchlib import procstat
from benchlib.client import raise_nofile
from benchlib.servers import ServerProcess, ServerSpec

RESULTS = Path(__file__).parent / "results"


async def sse_client(port: int, topic: str, ready: asyncio.Event, count: int) -> list[int]:
    """Open a stream; return the offsets of the first ``count`` events."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    request = f"GET /sse/broadcast/{topic}/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
    writer.write(request.encode())
    await reader.readuntil(b"\r\n\r\n")
    offsets: list[int] = []
    pending = b""
    started = False
    while len(offsets) < count:
        size = int((await reader.readline()).strip(), 16)  # chunked body
        pending += (await reader.readexactly(size + 2))[:-2]  # minus the chunk's CRLF
        *events, pending = pending.split(b"\n\n")
        for event in events:
            for line in event.split(b"\n"):
                if line.startswith(b"id: "):
                    if started:
                        offsets.append(int(line.rsplit(b":", 1)[1]))
                    else:  # the stream's position: it is subscribed
                        started = True
                        ready.set()
    writer.close()
    return offsets


async def _post(port: int, path: str, body: str) -> None:
    """One POST on a connection of its own (as behind a proxy with no keep-alive)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    data = body.encode()
    writer.write(
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n".encode()
        + data
    )
    status = (await reader.readline()).split()[1]
    writer.close()
    if status != b"202":
        raise RuntimeError(f"POST {path}: {status!r}")


async def http_client(port: int, topic: str, ready: asyncio.Event, count: int) -> list[int]:
    """The JSON protocol over HTTP (/sse/connect/): subscribe by POST; the sequence numbers of
    the first ``count`` messages on the stream."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /sse/connect/ HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    seqs: list[int] = []
    pending = b""
    while len(seqs) < count:
        size = int((await reader.readline()).strip(), 16)  # chunked body
        pending += (await reader.readexactly(size + 2))[:-2]
        *events, pending = pending.split(b"\n\n")
        for event in events:
            if event.startswith(b"event: session\ndata: "):
                session = event.split(b"data: ", 1)[1].decode()
                subscribe = json.dumps({"op": "subscribe", "topic": topic, "id": 1})
                await _post(port, f"/sse/connect/{session}/", subscribe)
            elif event.startswith(b"data: "):
                frame = json.loads(event[6:])
                if frame["type"] == "reply":
                    ready.set()
                elif frame["type"] == "message":
                    seqs.append(int(frame["data"].split(" ", 1)[0]))
    writer.close()
    return seqs


async def ws_client(port: int, topic: str, ready: asyncio.Event, count: int) -> list[int]:
    async with websockets.connect(f"ws://127.0.0.1:{port}/ws/broadcast/{topic}/") as client:
        ready.set()
        return [int(str(await client.recv()).split(" ", 1)[0]) for _ in range(count)]


async def measure(transport: str, n: int, messages: int, log_dir: Path) -> dict[str, Any]:
    server = ServerProcess(
        ServerSpec("megaphone", "Megaphone, 1 worker", is_megaphone=True), log_dir
    )
    try:
        problem = server.wait_listening(60)
        if problem:
            raise RuntimeError(problem)
        await asyncio.sleep(1)  # let the worker settle (its first requests import lazily)
        topic = f"broadcast.bench-{uuid.uuid4().hex[:8]}"
        rss_before = procstat.rss_bytes(server.pids())
        client = {"sse": sse_client, "http": http_client, "websocket": ws_client}[transport]
        readies = [asyncio.Event() for _ in range(n)]
        tasks = []
        for ready in readies:
            tasks.append(asyncio.ensure_future(client(server.port, topic, ready, messages)))
            await ready.wait()  # one at a time: no connection storm
        await asyncio.sleep(1)
        rss_idle = procstat.rss_bytes(server.pids())
        cpu_before = procstat.cpu_seconds(server.pids())
        start = time.monotonic()
        async with websockets.connect(f"ws://127.0.0.1:{server.port}/ws/broadcast/{topic}/") as pub:
            for seq in range(1, messages + 1):
                await pub.send(f"{seq} " + "x" * 96)
            results = await asyncio.wait_for(asyncio.gather(*tasks), 120)
            elapsed = time.monotonic() - start
            cpu = procstat.cpu_seconds(server.pids()) - cpu_before
        expected = list(range(1, messages + 1))
        good = sum(1 for got in results if got == expected)
        deliveries = n * messages
        return {
            "transport": transport,
            "n": n,
            "messages": messages,
            "complete": good == n,
            "rss_per_idle_client_kib": (rss_idle - rss_before) / n / 1024,
            "cpu_per_delivery_us": cpu / deliveries * 1e6,
            "deliveries_per_s": deliveries / elapsed,
        }
    finally:
        server.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="idle clients (default 1000)")
    parser.add_argument("--messages", type=int, default=50, help="burst size (default 50)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per transport (default 3)")
    args = parser.parse_args(argv)
    raise_nofile(4 * args.n + 1024)
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ")
    log_dir = RESULTS / "logs" / f"sse-{stamp}"
    runs: dict[str, list[dict[str, Any]]] = {"websocket": [], "sse": [], "http": []}
    for i in range(args.repeat):
        for transport in runs:  # interleaved: the machine's noise hits both alike
            run = asyncio.run(measure(transport, args.n, args.messages, log_dir))
            print(f"run {i + 1}/{args.repeat} {transport}: {json.dumps(run)}", flush=True)
            runs[transport].append(run)
    summary = {}
    keys = ("rss_per_idle_client_kib", "cpu_per_delivery_us", "deliveries_per_s")
    for transport, values in runs.items():
        summary[transport] = {k: statistics.median(r[k] for r in values) for k in keys}
        summary[transport]["complete"] = all(r["complete"] for r in values)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"sse-{stamp}.json"
    out.write_text(json.dumps({"args": vars(args), "runs": runs, "median": summary}, indent=2))
    print(f"\nN={args.n} idle clients, burst of {args.messages}, median of {args.repeat}:\n")
    print("| transport | RSS per idle client | server CPU per delivery | deliveries/s | complete |")
    print("|---|---|---|---|---|")
    for transport, m in summary.items():
        print(
            f"| {transport} | {m['rss_per_idle_client_kib']:.1f} KiB "
            f"| {m['cpu_per_delivery_us']:.1f} µs | {m['deliveries_per_s']:,.0f} "
            f"| {'yes' if m['complete'] else 'NO'} |"
        )
    print(f"\n{out}")
    return 0 if all(m["complete"] for m in summary.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
