"""Cost of a publish on the PostgreSQL backend: publishes/s, and CPU per publish of the
database (every process of a private server) and of the Python side (the publishing process,
with two listening backends in it standing for two workers, each receiving every message).

    .venv/bin/python bench/postgres_publish.py [--messages 3000] [--concurrency 1 8]

Starts its own PostgreSQL server (tests/postgres_server.py: initdb on a free port, fsync off,
as the tests run it) and removes it at the end. Prints one Markdown row per concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "src")]

from megaphone.backends.postgres import PostgresBackend  # noqa: E402
from megaphone.core.message import Message  # noqa: E402
from tests.postgres_server import PostgresServer  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu(server: PostgresServer) -> float:
    """CPU seconds used so far by the postmaster and its children (live ones)."""
    postmaster = int((server.data / "postmaster.pid").read_text().split()[0])
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        pid, ppid = int(stat.parent.name), int(fields[1])
        if pid == postmaster or ppid == postmaster:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


async def run(server: PostgresServer, messages: int, concurrency: int) -> dict[str, float]:
    publisher = PostgresBackend(server.url, history_size=1000)
    received: list[list[Message]] = [[], []]
    workers = [PostgresBackend(server.url) for _ in received]
    await publisher.start(lambda m: None)
    for worker, sink in zip(workers, received, strict=True):
        await worker.start(sink.append)
        await worker.subscribe("bench")
    payload = "x" * 100
    for _ in range(50):  # warm up: connections, prepared statements
        await publisher.publish("warm", payload)

    async def publish(n: int) -> None:
        for _ in range(n):
            await publisher.publish("bench", payload)

    db_before, py_before, began = server_cpu(server), time.process_time(), time.perf_counter()
    await asyncio.gather(*(publish(messages // concurrency) for _ in range(concurrency)))
    sent = messages // concurrency * concurrency
    while min(len(sink) for sink in received) < sent:
        await asyncio.sleep(0.005)
    elapsed = time.perf_counter() - began
    db_cpu, py_cpu = server_cpu(server) - db_before, time.process_time() - py_before
    for worker in workers:
        offsets = [m.offset for m in received[workers.index(worker)]]
        assert offsets == sorted(offsets) and len(set(offsets)) == sent, "lost or reordered"
        await worker.stop()
    await publisher.stop()
    return {
        "publishes_per_s": sent / elapsed,
        "db_us": db_cpu / sent * 1e6,
        "python_us": py_cpu / sent * 1e6,
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    args = parser.parse_args()
    server = PostgresServer()
    server.start()
    try:
        print(
            "| concurrent publishers | publishes/s | DB CPU per publish | Python CPU per publish |"
        )
        print("|---|---|---|---|")
        for concurrency in args.concurrency:
            r = await run(server, args.messages, concurrency)
            print(
                f"| {concurrency} | {r['publishes_per_s']:,.0f} | {r['db_us']:.0f} µs "
                f"| {r['python_us']:.0f} µs |"
            )
    finally:
        server.remove()


if __name__ == "__main__":
    asyncio.run(main())
