"""100,000 WebSocket connections to one server process: `make bench-100k` (see docs/benchmarks.md).

For each server in turn (Node `ws`, then Megaphone `manage.py serve`, 1 worker, in-memory
backend, then the same with `--transport native` when serve has that option):

1. N connections on one topic, from 127.0.0.2, 127.0.0.3, ... (benchlib.addresses), as fast as
   the server takes them with a bounded number in flight per client process;
2. one broadcast every 2 s for 60 s, which every connection must receive, every one, in order;
3. the avalanche: every connection reset at once and opened again right away, timed until all
   are back; then one more broadcast, which every new connection must receive.

Writes bench/results/100k-<UTC timestamp>.json and .md (--quick: under bench/results/tmp/).
Exit status: 0 when every server that ran delivered every broadcast to every connection once and
in order; 1 when one lost, duplicated or reordered messages, errored or ran out of time; 2 on a
harness error, an interruption, or a file-descriptor limit that could not be raised.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import resource
import signal
import statistics
import sys
import time
import traceback
import urllib.request
from pathlib import Path
from typing import Any

from benchlib import deps, report
from benchlib.addresses import source_plans
from benchlib.client import ClientPool, raise_nofile
from benchlib.scenarios import Config, Log, Session, _merge_counts, fmt_measure
from benchlib.servers import ServerSpec, all_servers, pick_servers, unavailable_reason

TOPIC = "broadcast.bench-100k"
SERVERS = ("node-ws", "megaphone", "megaphone-native")


@dataclasses.dataclass
class Sizes:
    n: int = 100_000
    per_addr: int = 20_000
    broadcasts: int = 30
    interval: float = 2.0
    concurrency: int = 200  # connection attempts in flight per client process
    storm_concurrency: int = 1000  # the same during the reconnect storm
    storm_attempts: int = 5
    drain: float = 15.0  # after the last broadcast: no new delivery for this long = lost
    idle: float = 5.0  # seconds the server's CPU is measured with N idle connections
    server_limit: float = 15 * 60.0  # hard limit per server
    total_limit: float = 50 * 60.0

    @classmethod
    def quick(cls) -> Sizes:
        return cls(
            n=2000,
            per_addr=500,  # 4 addresses: the spreading is exercised
            broadcasts=3,
            interval=1.0,
            concurrency=100,
            storm_concurrency=500,
            drain=5.0,
            idle=1.0,
            server_limit=90.0,
            total_limit=240.0,
        )


class Deadline(BaseException):
    """A time limit ran out (a BaseException: no ``except Exception`` on the way swallows it)."""


def servers_under_test(redis_db: int) -> list[ServerSpec]:
    by_name = {s.name: s for s in all_servers(redis_db)}
    node = dataclasses.replace(by_name["node-ws"], extra_args=("--fanout-timing",))
    return [node, by_name["megaphone"], by_name["megaphone-native"]]


#: File descriptors a server process needs besides its connections (about 20 measured).
FD_MARGIN = 256
CAP_SYS_RESOURCE = 24


def why_no_raise() -> str:
    """Why this process may not raise its hard RLIMIT_NOFILE."""
    nr_open = sysctl("fs.nr_open")
    with contextlib.suppress(OSError, StopIteration, ValueError):
        status = Path("/proc/self/status").read_text().splitlines()
        eff = int(next(x for x in status if x.startswith("CapEff:")).split()[1], 16)
        if not eff >> CAP_SYS_RESOURCE & 1:
            return (
                f"raising a hard limit needs CAP_SYS_RESOURCE, which this process lacks "
                f"(CapEff {eff:x}), even as uid {os.getuid()}; fs.nr_open is {nr_open}"
            )
    return f"setrlimit refused it (fs.nr_open {nr_open})"


def sysctl(name: str) -> str | None:
    with contextlib.suppress(OSError):
        return Path("/proc/sys", *name.split(".")).read_text().strip()
    return None


def node_fanouts(log_path: Path, skip_lines: int, clients: int) -> list[float]:
    """Microseconds per broadcast the Node peer printed (--fanout-timing) after ``skip_lines``
    lines of its log, for broadcasts to at least ``clients`` clients."""
    out = []
    with contextlib.suppress(OSError):
        for line in log_path.read_text(errors="replace").splitlines()[skip_lines:]:
            m = re.fullmatch(r"fanout (\d+) (\d+)", line.strip())
            if m and int(m[1]) >= clients:
                out.append(float(m[2]))
    return out


def fanout_seconds(port: int) -> tuple[float, float] | None:
    """(sum, count) of Megaphone's ``megaphone_fanout_seconds`` on /metrics: per loop turn that
    delivered, from its first frame held for the direct writes to the last written. None if
    unreadable."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as r:
            text = r.read().decode()
    except OSError:
        return None
    found = dict(re.findall(r"^megaphone_fanout_seconds_(sum|count) (\S+)$", text, re.M))
    if len(found) != 2:
        return None
    return float(found["sum"]), float(found["count"])


def log_lines(path: Path) -> int:
    with contextlib.suppress(OSError):
        return len(path.read_text(errors="replace").splitlines())
    return 0


def count_lines(path: Path, pattern: str) -> int:
    with contextlib.suppress(OSError):
        text = path.read_text(errors="replace").splitlines()
        return sum(1 for line in text if re.search(pattern, line))
    return 0


def summary(vals: list[float]) -> dict[str, float] | None:
    if not vals:
        return None
    return {"median": statistics.median(vals), "max": max(vals), "count": len(vals)}


def connect_progress(log: Log, name: str, what: str, n: int, t0: float) -> Any:
    def progress(stats: list[dict[str, Any]]) -> None:
        conns = sum(s["connections"] for s in stats)
        errs = sum(s["connect_errors"] for s in stats)
        secs = time.monotonic() - t0
        log(
            f"  {name}: {what} {conns:,}/{n:,} ({conns / secs:,.0f}/s)"
            + (f", {errs:,} failed attempts" if errs else "")
        )

    return progress


def run_server(
    spec: ServerSpec, sizes: Sizes, cfg: Config, log: Log, log_dir: Path, procs: int
) -> dict[str, Any]:
    """The three phases on one fresh server with a fresh client pool; the row of results."""
    row: dict[str, Any] = {"server": spec.name, "label": spec.label, "n": sizes.n}
    pool = ClientPool(procs)
    session: Session | None = None
    try:
        log(f"{spec.name}: starting server ({' '.join(spec.argv(0)[0][1:])})")
        session = Session(spec, pool, cfg, log, log_dir)
        problem = session.start()
        if problem:
            row.update(status="error", status_text=f"server did not start: {problem}")
            log(f"{spec.name}: {row['status_text']}")
            return row
        phases(session, sizes, row)
    except Deadline as exc:
        row.update(status="timeout", status_text=str(exc))
        log(f"{spec.name}: {exc}; stopping it")
    except Exception as exc:
        row.update(status="error", status_text=f"harness error: {exc}")
        log(f"{spec.name}: harness error\n{traceback.format_exc()}")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        # the pool first: closing 100k connections one by one takes longer than killing them
        pool.close()
        if session is not None:
            session.server.stop()
    return row


def phases(s: Session, sizes: Sizes, row: dict[str, Any]) -> None:
    log, name, n = s.log, s.spec.name, sizes.n
    time.sleep(0.5 * s.cfg.settle)
    base_rss = s.rss()
    row["base_rss_mib"] = base_rss / 2**20

    # 1. N connections
    t0 = time.monotonic()
    plans = source_plans(TOPIC, n, s.pool.size, sizes.per_addr)
    row["source_addresses"] = sorted({a for plan in plans for _, _, a in plan})
    c = s.connect(
        plans, sizes.concurrency, progress=connect_progress(log, name, "connected", n, t0)
    )
    row["connect"] = c
    log(
        f"  {name}: {c['ok']:,}/{n:,} connected in {c['seconds']:.1f} s "
        f"({c['conn_per_s']:,.0f}/s)" + (f"; failed attempts {c['errors']}" if c["errors"] else "")
    )
    if not c["ok"]:
        row.update(status="error", status_text="no connection accepted")
        return
    time.sleep(2.0 * s.cfg.settle)
    rss = s.rss()
    row["rss_mib"] = rss / 2**20
    row["rss_kib_per_conn"] = (rss - base_rss) / c["ok"] / 1024
    row["cpu_us_per_conn"] = c["server_cpu_us_per_conn"]
    log(
        f"  {name}: server RSS {rss / 2**20:,.0f} MiB, {row['rss_kib_per_conn']:.1f} KiB and "
        f"{row['cpu_us_per_conn']:.0f} µs CPU per connection"
    )

    # 2. the broadcasts
    b = sizes.broadcasts
    # what N idle connections cost (keepalive pings, timers): taken out of CPU per delivery
    cpu0 = s.server_cpu()[0]
    time.sleep(sizes.idle)
    idle_rate = (s.server_cpu()[0] - cpu0) / sizes.idle
    row["idle_cpu_pct"] = idle_rate * 100
    log(f"  {name}: idle: {idle_rate:.0%} of a core with {c['ok']:,} connections")
    log(f"  {name}: {b} broadcasts, one every {sizes.interval:g} s")
    skip = log_lines(s.server.log_path)
    fanout0 = fanout_seconds(s.server.port) if s.spec.is_megaphone else None

    def progress(secs: float, got: int, expected: int) -> None:
        log(f"  {name}: {secs:.0f} s, {got:,}/{expected:,} deliveries")

    m = s.measure(
        {0: [TOPIC]},
        {TOPIC: b},
        b,
        1.0 / sizes.interval,
        timeout=b * sizes.interval + 4 * sizes.drain,
        stall=sizes.drain,
        progress=progress,
    )
    row["broadcast"] = m
    if m["delivered"]:
        net = m["server_cpu_s"] - idle_rate * m["seconds"]
        row["cpu_us_per_delivery"] = m["server_cpu_s"] * 1e6 / m["delivered"]
        row["cpu_us_per_delivery_net"] = max(0.0, net) * 1e6 / m["delivered"]
    row["spread_ms"] = summary(m.get("spread_ms") or [])
    fan = node_fanouts(s.server.log_path, skip, c["ok"]) if name == "node-ws" else []
    row["server_fanout_ms"] = summary([us / 1000 for us in fan])
    fanout1 = fanout_seconds(s.server.port) if fanout0 else None
    if fanout0 and fanout1 and fanout1[1] > fanout0[1]:
        mean = (fanout1[0] - fanout0[0]) / (fanout1[1] - fanout0[1])
        row["server_turns_ms"] = {"mean": mean * 1000, "count": fanout1[1] - fanout0[1]}
    log(f"  {name}: broadcasts: {fmt_measure(m)}")

    # 3. the avalanche
    plans = source_plans(TOPIC, n, s.pool.size, sizes.per_addr, round_=1)
    log(f"  {name}: dropping every connection (TCP reset) and reconnecting all {n:,}")
    cpu0 = s.server_cpu()[0]
    t0 = time.monotonic()
    args = (s.server.url_base, s.cfg.connect_timeout, sizes.storm_attempts)
    res = s.pool.call_all(
        "reconnect",
        [(args[0], plan, sizes.storm_concurrency, *args[1:]) for plan in plans],
        timeout=max(120.0, n / 50),
        progress=connect_progress(log, name, "reconnected", n, t0),
    )
    cpu1 = s.server_cpu()[0]
    ok = sum(r["ok"] for r in res)
    storm = {
        "dropped": sum(r["dropped"] for r in res),
        "ok": ok,
        "failed": n - ok,
        "errors": _merge_counts(r["errors"] for r in res),
        "seconds": (max(r["done_at"] for r in res) - min(r["dropped_at"] for r in res)) / 1e9,
        "server_cpu_us_per_conn": (cpu1 - cpu0) * 1e6 / ok if ok else None,
        "concurrency": sizes.storm_concurrency * s.pool.size,
    }
    row["storm"] = storm
    log(
        f"  {name}: storm: {ok:,}/{n:,} back in {storm['seconds']:.1f} s"
        + (f"; failed attempts {storm['errors']}" if storm["errors"] else "")
    )
    time.sleep(1.0 * s.cfg.settle)
    row["rss_after_storm_mib"] = s.rss() / 2**20
    v = s.measure({0: [TOPIC]}, {TOPIC: 1}, 1, 0, timeout=60, stall=sizes.drain)
    row["after_storm"] = v
    log(f"  {name}: broadcast after the storm: {fmt_measure(v)}")

    problems = [f"broadcasts: {m['status_text']}"] if m["status"] != "ok" else []
    if v["status"] != "ok":
        problems.append(f"after the storm: {v['status_text']}")
    notes = []
    emfile = count_lines(s.server.log_path, r"Too many open files|EMFILE|out of system resource")
    row["server_log_emfile"] = emfile
    if emfile:
        notes.append(f"the server logged {emfile} times that it ran out of file descriptors")
    if c["failed"]:
        notes.append(f"{c['failed']:,} connections never opened")
    if storm["failed"]:
        notes.append(f"{storm['failed']:,} never reopened in the storm")
    if problems:
        row.update(status="failed", status_text="; ".join(problems + notes))
    else:
        row.update(status="ok", status_text="; ".join(["ok", *notes]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="2,000 connections, 3 broadcasts (~30 s)")
    p.add_argument("--n", type=int, help="connections per server (default 100000)")
    p.add_argument("--servers", help=f"comma-separated, from: {', '.join(SERVERS)}")
    p.add_argument("--per-addr", type=int, help="connections per source address")
    p.add_argument("--broadcasts", type=int, help="broadcasts per server (default 30)")
    p.add_argument("--interval", type=float, help="seconds between broadcasts (default 2)")
    p.add_argument("--concurrency", type=int, help="connects in flight per client process")
    p.add_argument("--storm-concurrency", type=int, help="the same in the reconnect storm")
    p.add_argument("--client-procs", type=int, default=max(2, os.cpu_count() or 2))
    p.add_argument("--server-time-limit", type=float, help="seconds per server")
    p.add_argument("--time-limit", type=float, help="seconds for the whole run")
    p.add_argument("--out", type=Path, help="results directory (default bench/results)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sizes = Sizes.quick() if args.quick else Sizes()
    for arg, field in (
        ("n", "n"),
        ("per_addr", "per_addr"),
        ("broadcasts", "broadcasts"),
        ("interval", "interval"),
        ("concurrency", "concurrency"),
        ("storm_concurrency", "storm_concurrency"),
        ("server_time_limit", "server_limit"),
        ("time_limit", "total_limit"),
    ):
        if getattr(args, arg) is not None:
            setattr(sizes, field, getattr(args, arg))
    specs = servers_under_test(redis_db=11)
    if args.servers:
        specs = pick_servers(specs, args.servers)
    cfg = Config.quick_config() if args.quick else Config()
    cfg.connect_timeout = 30.0

    log = Log()
    now, stamp, out_dir, log_dir = report.run_dirs(args.out, args.quick, "logs-100k")

    # the server process holds n sockets (and ~20 other files), each client process n / procs:
    # children inherit the limit
    want = sizes.n + FD_MARGIN
    nofile = raise_nofile(want)
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if nofile < want:
        log(
            f"RLIMIT_NOFILE is {nofile} (hard {hard}) and could not be raised to {want}: "
            f"{why_no_raise()}. The largest --n this limit allows is {nofile - FD_MARGIN:,}."
        )
        return 2
    net = {
        k: sysctl(k)
        for k in (
            "net.core.somaxconn",
            "net.ipv4.tcp_max_syn_backlog",
            "net.ipv4.tcp_syncookies",
            "net.ipv4.ip_local_port_range",
            "net.netfilter.nf_conntrack_max",
            "net.netfilter.nf_conntrack_count",
            "fs.nr_open",
        )
    }
    log(
        f"megaphone bench-100k ({'quick' if args.quick else 'full'}): N={sizes.n:,} per server; "
        f"servers {', '.join(s.name for s in specs)}; {args.client_procs} client processes; "
        f"RLIMIT_NOFILE {nofile}; somaxconn {net['net.core.somaxconn']}, "
        f"tcp_max_syn_backlog {net['net.ipv4.tcp_max_syn_backlog']} "
        "(serve listens with backlog 4096, Node ws with 4096)"
    )
    ct_max = net["net.netfilter.nf_conntrack_max"]
    ct_count = net["net.netfilter.nf_conntrack_count"]
    if ct_max and ct_count and int(ct_max) - int(ct_count) < 2 * sizes.n:
        log(
            f"warning: conntrack holds {ct_count} of {ct_max} entries; a reconnect storm of "
            f"{sizes.n:,} may need {2 * sizes.n:,} for a few seconds (reset ones expire in 10 s)"
        )
    if any(m.startswith("picows") for m in deps.ensure_pip(log)):
        log("picows (the load client) is missing and could not be installed")
        return 2
    node_problem = deps.ensure_node_ws(log) if any(s.name == "node-ws" for s in specs) else None

    rows: list[dict[str, Any]] = []
    doc: dict[str, Any] = {
        "meta": {
            "date": now.strftime("%Y-%m-%d %H:%M UTC"),
            "stamp": stamp,
            "command": " ".join(
                ["python bench/hundred_k.py", *(sys.argv[1:] if argv is None else argv)]
            ),
            "mode": "quick" if args.quick else "full",
            "client_procs": args.client_procs,
            "sizes": dataclasses.asdict(sizes),
            "rlimit_nofile": nofile,
            "sysctl": net,
            "listen_backlog": {"megaphone": 4096, "node-ws": 4096},
            "machine": report.machine_info(),
        },
        "rows": rows,
    }

    def on_alarm(signum: int, frame: Any) -> None:
        raise Deadline("time limit reached")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    end = time.monotonic() + sizes.total_limit
    interrupted = None
    try:
        for spec in specs:
            base = {"server": spec.name, "label": spec.label, "n": sizes.n}
            why = node_problem if spec.name == "node-ws" else None
            why = why or unavailable_reason(spec)
            if why:
                log(f"{spec.name}: unavailable: {why}")
                rows.append({**base, "status": "unavailable", "status_text": why})
                continue
            left = end - time.monotonic()
            if left < 10:
                rows.append({**base, "status": "timeout", "status_text": "no time left"})
                continue
            limit = min(sizes.server_limit, left)
            signal.setitimer(signal.ITIMER_REAL, limit)
            t0 = time.monotonic()
            row = run_server(spec, sizes, cfg, log, log_dir, args.client_procs)
            if row["status"] == "timeout":
                row["status_text"] = f"hard time limit of {limit:.0f} s reached"
            row["wall_s"] = round(time.monotonic() - t0, 1)
            log(f"{spec.name}: {row['status_text']} ({row['wall_s']:.0f} s)")
            rows.append(row)
    except KeyboardInterrupt as exc:
        interrupted = f"interrupted: {str(exc) or 'Ctrl-C'}"
        log(f"{interrupted}; cleaning up")
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)

    doc["meta"]["interrupted"] = interrupted
    doc["meta"]["wall_s"] = round(time.monotonic() - log.t0, 1)
    json_path, md_path = out_dir / f"100k-{stamp}.json", out_dir / f"100k-{stamp}.md"
    report.write_json(json_path, doc)
    md_path.write_text(report.hundred_k_markdown(doc))
    print(report.hundred_k_markdown(doc), file=sys.stderr)
    log(f"wrote {json_path}, {md_path}")
    failed = [r for r in rows if r["status"] not in ("ok", "unavailable")]
    for r in failed:
        log(f"FAILED: {r['server']}: {r['status_text']}")
    if interrupted:
        return 2
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
