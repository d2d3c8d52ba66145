"""What a client that never reads costs the others: latency and server memory, measured.

    .venv/bin/python bench/slow_consumer.py                 # 5,000 messages of 4 KiB per burst
    .venv/bin/python bench/slow_consumer.py --count 2000

Starts its own server (``manage.py serve`` on a free port of 127.0.0.1, the hardening tests'
settings: no publish rate limit, history as long as a burst). A healthy client reads a burst of
numbered messages (``calm``); then a client subscribes over the JSON protocol with a 4 KiB
receive buffer and reads nothing while a second burst goes out (``flood``), until the server
closes it (4408). Reports the healthy client's publish-to-receive p50/p99 in both bursts, and
the server's RSS before, at its peak (sampled every 20 ms) and after. It asserts only what a
run must deliver (every message to the healthy client, in order; the slow client closed with
4408); the figures are reported, not asserted (tests/e2e/test_hardening.py keeps the
behaviour). Results go to ``bench/results/slow-consumer-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

import websockets

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchlib.servers import ServerProcess, ServerSpec, unavailable_reason  # noqa: E402
from tests.e2e.rawws import TEXT, RawClient, frame, peak_rss, rss_kib  # noqa: E402

MiB = 1024
TOPIC = "flood"


def quantiles(values: list[float]) -> dict[str, float]:
    cuts = statistics.quantiles(values, n=100)
    return {"p50_ms": round(cuts[49] * 1000, 2), "p99_ms": round(cuts[98] * 1000, 2)}


async def burst(
    publisher: websockets.ClientConnection,
    healthy: websockets.ClientConnection,
    tag: str,
    count: int,
    size: int,
) -> list[float]:
    """Publish ``count`` messages of ``size`` bytes, at most 256 ahead of the healthy client
    (which shares this process's CPU and must not become a slow consumer itself); its latencies,
    checking it got every one in order."""
    latencies: list[float] = []
    caught_up = asyncio.Event()

    async def receive() -> None:
        for i in range(count):
            text = await asyncio.wait_for(healthy.recv(), 60)
            now = time.perf_counter()
            got_tag, number, sent_at, _ = str(text).split(" ", 3)
            assert (got_tag, int(number)) == (tag, i), f"lost or reordered at {tag} {i}"
            latencies.append(now - float(sent_at))
            caught_up.set()

    receiving = asyncio.ensure_future(receive())
    for i in range(count):
        while i - len(latencies) > 256 and not receiving.done():
            caught_up.clear()
            await caught_up.wait()
        text = f"{tag} {i} {time.perf_counter()} ".ljust(size, "x")
        await publisher.send(text)
    await receiving
    return latencies


async def measure(args: argparse.Namespace, port: int, pid: int) -> dict[str, object]:
    url = f"ws://127.0.0.1:{port}/ws/broadcast/{TOPIC}/"
    publisher = await websockets.connect(url, max_queue=None)
    healthy = await websockets.connect(url, max_queue=None)
    calm = await burst(publisher, healthy, "calm", args.count, args.size)
    rss_before = rss_kib(pid)

    slow = RawClient(port, rcvbuf=4096)
    assert slow.handshake("/ws/connect/") == 101
    slow.recv_frame()  # connected
    slow.send(frame(TEXT, json.dumps({"op": "subscribe", "id": 1, "topic": TOPIC}).encode()))
    slow.recv_frame()  # the reply; from here on it reads nothing
    with peak_rss(pid) as peak:
        flooded = await burst(publisher, healthy, "flood", args.count, args.size)
    _, code = await asyncio.to_thread(slow.read_until_close, 30)
    slow.close()
    assert code == 4408, f"the slow client was closed with {code}, not 4408"
    await publisher.close()
    await healthy.close()
    rss_after = rss_kib(pid)
    return {
        "count": args.count,
        "size": args.size,
        "calm": quantiles(calm),
        "beside_slow_client": quantiles(flooded),
        "rss_mib": {
            "before": round(rss_before / MiB, 1),
            "peak": round(peak[0] / MiB, 1),
            "after": round(rss_after / MiB, 1),
        },
    }


async def run(args: argparse.Namespace) -> dict[str, object]:
    overrides = {
        "DASHBOARD_INTERVAL": 0,
        "PUBLISH_RATE": 0,
        "HISTORY_SIZE": args.count,
        "RECOVERY_MAX_MESSAGES": args.count,
    }
    env = {
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.e2e.hardening_settings",
        "MEGAPHONE_OVERRIDES": json.dumps(overrides),
    }
    spec = ServerSpec("megaphone", "Megaphone, 1 worker", is_megaphone=True, env=env)
    problem = unavailable_reason(spec)  # migrates the example project's database
    if problem:
        raise RuntimeError(problem)
    server = ServerProcess(spec, ROOT / "bench" / "results" / "tmp")
    try:
        problem = server.wait_listening(30)
        if problem:
            raise RuntimeError(problem)
        return await measure(args, server.port, server.proc.pid)
    finally:
        server.stop(10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count", type=int, default=5000, help="messages per burst")
    parser.add_argument("--size", type=int, default=4096, help="bytes per message")
    args = parser.parse_args()
    result = asyncio.run(run(args))
    print(json.dumps(result, indent=2))
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    out = ROOT / "bench" / "results" / f"slow-consumer-{stamp}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
