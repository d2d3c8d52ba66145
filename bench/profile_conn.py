"""Where an idle connection's memory and a handshake's CPU go, in ``manage.py serve`` itself.

Runs the example project's ``manage.py serve`` (1 worker, in-memory backend) in a child process
with :mod:`tracemalloc` on, opens ``--n`` idle connections to ``/ws/broadcast/<topic>/`` from this
process, and then asks the server (SIGUSR1) for a snapshot: the allocations still held, grouped
by the source file that made them (uvicorn, websockets, asyncio, channels, django, megaphone),
minus a snapshot taken before the connections opened. A second run (``--cprofile``) profiles
the server during a storm of ``--n`` handshakes instead and prints the top functions by own time
and by cumulative time.

    .venv/bin/python bench/profile_conn.py --n 2000
    .venv/bin/python bench/profile_conn.py --n 2000 --cprofile

Figures it printed are in docs/benchmarks.md ("Where a connection goes"). tracemalloc counts
Python allocations only (not the kernel's socket buffers) and slows the server several times:
its byte counts are exact, its timings are not; the cProfile run has no tracemalloc.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
MANAGE = ROOT / "example" / "manage.py"

# Run inside the server process (python -c): install the signal handlers, then run manage.py.
SERVER_BOOT = r"""
import cProfile, os, pstats, runpy, signal, sys, tracemalloc, io
mode, out = sys.argv[1], sys.argv[2]
state = {}
def groups(snapshot):
    by = {}
    for stat in snapshot.statistics("filename"):
        name = stat.traceback[0].filename
        key = name
        for part in ("uvicorn", "websockets", "asyncio", "channels", "django", "megaphone",
                     "httptools", "asgiref"):
            if "/" + part + "/" in name or name.endswith("/" + part + ".py"):
                key = part
                break
        else:
            key = os.path.basename(name)
        size, count = by.get(key, (0, 0))
        by[key] = (size + stat.size, count + stat.count)
    return by
def snap(signum, frame):
    if mode == "mem":
        import gc
        gc.collect()
        snapshot = tracemalloc.take_snapshot().filter_traces(
            [tracemalloc.Filter(False, tracemalloc.__file__)])
        if "base" not in state:
            state["base"] = snapshot
            open(out + ".ready", "w").close()
            return
        with open(out + ".tmp", "w") as f:
            now, base = groups(snapshot), groups(state["base"])
            for key in sorted(now, key=lambda k: -(now[k][0] - base.get(k, (0, 0))[0])):
                size = now[key][0] - base.get(key, (0, 0))[0]
                count = now[key][1] - base.get(key, (0, 0))[1]
                f.write(f"{key}\t{size}\t{count}\n")
            f.write("--lines--\n")
            for stat in snapshot.compare_to(state["base"], "lineno")[:40]:
                f.write(f"{stat}\n")
            f.write("--types--\n")
            import collections
            counts = collections.Counter(type(o).__qualname__ for o in gc.get_objects())
            for name, count in counts.most_common(40):
                f.write(f"{name}\t{count}\n")
        os.replace(out + ".tmp", out)
    else:
        if "prof" not in state:
            state["prof"] = cProfile.Profile()
            state["prof"].enable()
            open(out + ".ready", "w").close()
            return
        state["prof"].disable()
        buf = io.StringIO()
        stats = pstats.Stats(state["prof"], stream=buf)
        stats.sort_stats("tottime").print_stats(35)
        stats.sort_stats("cumulative").print_stats(45)
        open(out + ".tmp", "w").write(buf.getvalue())
        os.replace(out + ".tmp", out)
signal.signal(signal.SIGUSR1, snap)
if mode == "mem":
    tracemalloc.start(1)
sys.argv = [sys.argv[3], "serve", "--host", "127.0.0.1", "--port", sys.argv[4],
            "--log-level", "warning", "--transport", sys.argv[5]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


async def open_idle(port: int, n: int, concurrency: int = 100) -> list[object]:
    from websockets.asyncio.client import connect

    conns: list[object] = []
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            ws = await connect(
                f"ws://127.0.0.1:{port}/ws/broadcast/prof-{i % 10}/",
                ping_interval=None,
                compression=None,
                max_queue=None,
            )
            conns.append(ws)

    await asyncio.gather(*(one(i) for i in range(n)))
    return conns


async def close_all(conns: list[Any]) -> None:
    await asyncio.gather(*(c.close() for c in conns))


def wait_file(path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():  # polls another process's output
        if time.monotonic() > deadline:
            raise SystemExit(f"no {path} after {timeout} s")
        time.sleep(0.1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--port", type=int, default=18765)
    ap.add_argument("--cprofile", action="store_true", help="profile a handshake storm")
    ap.add_argument("--transport", choices=("asgi", "native"), default="asgi")
    args = ap.parse_args()
    mode = "cpu" if args.cprofile else "mem"
    out = Path(f"/tmp/megaphone-profile-{os.getpid()}.txt")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env.pop("REDIS_URL", None)
    boot = [mode, str(out), str(MANAGE), str(args.port), args.transport]
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER_BOOT, *boot],
        env=env,
        cwd=ROOT / "example",
    )
    try:
        # listening?
        deadline = time.monotonic() + 30
        import socket

        while True:
            try:
                socket.create_connection(("127.0.0.1", args.port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("server did not listen") from None
                time.sleep(0.2)
        loop = asyncio.new_event_loop()
        # warm up: one connection, so imports and first-use caches are not counted
        warm = loop.run_until_complete(open_idle(args.port, 10))
        loop.run_until_complete(close_all(warm))
        time.sleep(1.0)
        server.send_signal(signal.SIGUSR1)
        wait_file(Path(str(out) + ".ready"), 30)
        t0 = time.monotonic()
        conns = loop.run_until_complete(open_idle(args.port, args.n))
        took = time.monotonic() - t0
        time.sleep(1.0)
        server.send_signal(signal.SIGUSR1)
        wait_file(out, 120)
        time.sleep(0.5)
        text = out.read_text()
        print(f"{len(conns)} connections in {took:.2f} s ({mode})")
        if mode == "mem":
            head, _, rest = text.partition("--lines--\n")
            total = 0
            for line in head.splitlines():
                key, size, count = line.split("\t")
                total += int(size)
            print(f"held per connection: {total / args.n:,.0f} B (Python allocations)")
            for line in head.splitlines():
                key, size, count = line.split("\t")
                if abs(int(size)) / args.n >= 16:
                    print(
                        f"  {key:20s} {int(size) / args.n:8,.0f} B/conn"
                        f"  {int(count) / args.n:6.1f} blocks/conn"
                    )
            print(rest)
        else:
            print(text)
        loop.run_until_complete(close_all(conns))
    finally:
        server.send_signal(signal.SIGTERM)
        try:
            server.wait(10)
        except subprocess.TimeoutExpired:
            server.kill()
        for p in (out, Path(str(out) + ".ready")):
            p.unlink(missing_ok=True)


if __name__ == "__main__":
    main()
