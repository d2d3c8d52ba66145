"""Soak test: many connections, steady churn, one broadcast per second, for minutes.

    .venv/bin/python bench/soak.py                  # 5,000 connections, 10 minutes
    .venv/bin/python bench/soak.py --connections 500 --duration 60

Starts its own server (``manage.py serve`` on a free port of 127.0.0.1), opens the connections on
one topic, then every second publishes one numbered message while, spread over each minute,
``--churn`` of the connections close and as many new ones open. It checks that every connection
received every message published while it was open, in order, with no gap or duplicate (a message
in flight at the moment a connection opens or closes may or may not reach it), and samples the
server's RSS to report its slope over the second half of the run. Exits non-zero on any loss.
Results go to ``bench/results/soak-<time>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import websockets

from benchlib import procstat
from benchlib.servers import ServerProcess, ServerSpec, unavailable_reason

ROOT = Path(__file__).resolve().parent.parent
TOPIC = "broadcast.soak"  # of the family clients may publish on by default


@dataclass
class Subscriber:
    joined_after: int  # last seq published before the connection was open
    left_after: int | None = None  # last seq published before it started closing
    seqs: list[int] = field(default_factory=list)


def check(subscriber: Subscriber, last_seq: int) -> tuple[int, int, list[str]]:
    """(delivered, expected, problems) for one subscriber."""
    problems = []
    seqs = subscriber.seqs
    if any(b != a + 1 for a, b in itertools.pairwise(seqs)):
        problems.append("gap, duplicate or reorder")
    # Messages strictly inside the window must all arrive; those in flight when the connection
    # opened (joined_after + 1) or began to close (left_after) may or may not.
    end = subscriber.left_after - 1 if subscriber.left_after is not None else last_seq
    must = set(range(subscriber.joined_after + 2, end + 1))
    missing = must - set(seqs)
    if missing:
        problems.append(f"missing {len(missing)} (first {min(missing)})")
    return len(seqs), len(must), problems


async def run(args: argparse.Namespace) -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    spec = ServerSpec("megaphone", "Megaphone, 1 worker", is_megaphone=True)
    problem = unavailable_reason(spec)  # migrates the example project's database
    if problem:
        raise RuntimeError(problem)
    server = ServerProcess(spec, ROOT / "bench" / "results" / "tmp")
    try:
        problem = server.wait_listening(30)
        if problem:
            raise RuntimeError(problem)
        return await soak(args, f"{server.url_base}{TOPIC}/", server.proc.pid)
    finally:
        server.stop(10)


async def soak(args: argparse.Namespace, url: str, server_pid: int) -> int:
    seq = 0
    finished: list[Subscriber] = []
    live: dict[asyncio.Task[None], Subscriber] = {}

    async def listen(subscriber: Subscriber, ws: websockets.ClientConnection) -> None:
        try:
            async for text in ws:
                subscriber.seqs.append(json.loads(text)["seq"])
        except websockets.ConnectionClosed:
            pass

    async def open_one() -> None:
        ws = await websockets.connect(url, compression=None, max_queue=None)
        subscriber = Subscriber(joined_after=seq)
        task = asyncio.ensure_future(listen(subscriber, ws))
        task.ws = ws  # type: ignore[attr-defined]
        live[task] = subscriber

    async def close_one() -> None:
        task = random.choice(list(live))
        subscriber = live.pop(task)
        subscriber.left_after = seq
        await task.ws.close()  # type: ignore[attr-defined]
        await task
        finished.append(subscriber)

    print(f"opening {args.connections} connections to {url}", file=sys.stderr)
    for start in range(0, args.connections, 200):
        await asyncio.gather(*(open_one() for _ in range(min(200, args.connections - start))))
    publisher = await websockets.connect(url, compression=None, max_queue=None)
    publisher_task = asyncio.ensure_future(publisher.wait_closed())
    started = time.monotonic()
    samples: list[tuple[float, int]] = []
    churn_per_second = args.connections * args.churn / 60
    churn_debt = 0.0
    while (elapsed := time.monotonic() - started) < args.duration:
        seq += 1
        await publisher.send(json.dumps({"seq": seq, "t": time.time_ns()}).ljust(100))
        churn_debt += churn_per_second
        while churn_debt >= 1:
            churn_debt -= 1
            await close_one()
            await open_one()
        if seq % 10 == 0:
            samples.append((elapsed, procstat.rss_bytes([server_pid]) // 1024))
            print(
                f"[{elapsed:5.0f} s] seq {seq}, {len(live)} open, {len(finished)} churned, "
                f"server RSS {samples[-1][1] / 1024:.1f} MiB",
                file=sys.stderr,
            )
        await asyncio.sleep(max(0.0, seq - (time.monotonic() - started)))
    await asyncio.sleep(2)  # let the last message arrive
    for task in list(live):
        subscriber = live.pop(task)
        await task.ws.close()  # type: ignore[attr-defined]
        await task
        finished.append(subscriber)
    await publisher.close()
    await publisher_task

    delivered = expected = 0
    failures = []
    for subscriber in finished:
        got, must, problems = check(subscriber, seq)
        delivered += got
        expected += must
        if problems:
            failures.append(problems)
    second_half = [(t, r) for t, r in samples if t >= args.duration / 2]
    slope = 0.0
    if len(second_half) >= 2:
        n = len(second_half)
        mean_t = sum(t for t, _ in second_half) / n
        mean_r = sum(r for _, r in second_half) / n
        var = sum((t - mean_t) ** 2 for t, _ in second_half) or 1.0
        slope = sum((t - mean_t) * (r - mean_r) for t, r in second_half) / var * 60
    result = {
        "connections": args.connections,
        "duration_s": args.duration,
        "churn_per_minute": args.churn,
        "messages": seq,
        "connections_total": len(finished),
        "delivered": delivered,
        "expected_at_least": expected,
        "failed_connections": len(failures),
        "failures_sample": failures[:5],
        "rss_kib_samples": samples,
        "rss_slope_kib_per_min_second_half": round(slope, 1),
    }
    out = ROOT / "bench" / "results" / f"soak-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    verdict = "ok" if not failures else "FAILED"
    print(
        f"{verdict}: {seq} messages, {len(finished)} connections over the run, "
        f"{delivered} delivered (at least {expected} expected), {len(failures)} connections with "
        f"loss; RSS slope over the second half {slope:+.1f} KiB/min; wrote {out}",
    )
    return 0 if not failures else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=5000)
    parser.add_argument("--duration", type=float, default=600, help="seconds")
    parser.add_argument("--churn", type=float, default=0.10, help="share replaced per minute")
    sys.exit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
