"""The scenarios: burst fan-out, steady rate, many topics, connection rate (idle memory is measured
in the burst scenario, once its N connections are open and before the first message)."""

from __future__ import annotations

import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import procstat
from .client import MSG_SIZE, ClientPool
from .servers import ServerProcess, ServerSpec

SCENARIOS = ("burst", "steady", "topics", "connrate")
#: The bench's topics are of the ``broadcast.*`` family: the one clients may publish on by default.
PROBE_TOPIC = "broadcast.bench-probe"


@dataclass
class Config:
    quick: bool = False
    burst_ns: list[int] = field(default_factory=lambda: [1000, 5000, 10000])
    burst_msgs: int = 50
    repeats: int = 3
    steady_n: int = 5000
    steady_rate: float = 5.0
    steady_seconds: float = 20.0
    topics_conns: int = 10000
    topics_count: int = 1000
    topics_msgs: int = 10
    connrate_n: int = 5000
    collapse_timeout: float = 60.0  # a measurement that has not completed by then has collapsed
    stall_timeout: float = 10.0  # no new delivery for this long, publishing done: messages lost
    repeat_budget: float = 25.0  # no further repeat once one measurement took longer than this
    connect_concurrency: int = 50  # connection attempts in flight per client process
    connect_timeout: float = 20.0
    msg_size: int = MSG_SIZE
    settle: float = 1.0  # scales the pauses that let a server settle between steps

    @classmethod
    def quick_config(cls) -> Config:
        return cls(
            quick=True,
            burst_ns=[50],
            burst_msgs=10,
            steady_n=50,
            steady_seconds=2.0,
            topics_conns=100,
            topics_count=10,
            topics_msgs=5,
            connrate_n=100,
            collapse_timeout=10.0,
            stall_timeout=4.0,
            repeat_budget=5.0,
            settle=0.3,
        )


class Log:
    def __init__(self) -> None:
        self.t0 = time.monotonic()

    def __call__(self, msg: str) -> None:
        t = int(time.monotonic() - self.t0)
        print(f"[{t // 60:02d}:{t % 60:02d}] {msg}", file=sys.stderr, flush=True)


def percentile(sorted_vals: Any, q: float) -> float:
    n = len(sorted_vals)
    if n == 0:
        return float("nan")
    k = min(n - 1, max(0, round(q / 100 * (n - 1))))
    return float(sorted_vals[k])


def latency_summary(chunks: list[bytes]) -> dict[str, float]:
    try:
        import numpy as np

        arr = np.concatenate([np.frombuffer(c, dtype=np.int64) for c in chunks] or [np.zeros(0)])
        arr.sort()
    except ImportError:
        import array

        vals = array.array("q")
        for c in chunks:
            vals.frombytes(c)
        arr = sorted(vals)
    return {
        f"{name}_ms": percentile(arr, q) / 1e6
        for name, q in (("p50", 50), ("p90", 90), ("p99", 99), ("max", 100))
    }


def split(n: int, parts: int) -> list[int]:
    return [n // parts + (1 if i < n % parts else 0) for i in range(parts)]


class Session:
    """One server instance, the client pool's connections to it, and measurements on it."""

    def __init__(
        self, spec: ServerSpec, pool: ClientPool, cfg: Config, log: Log, log_dir: Path
    ) -> None:
        self.spec, self.pool, self.cfg, self.log = spec, pool, cfg, log
        self.server = ServerProcess(spec, log_dir)
        self.redis_pids = procstat.find_by_comm("redis-server") if spec.uses_redis else []
        self.run_id = int(time.time()) % 100000 * 100

    # -- lifecycle --------------------------------------------------------------------------
    def start(self) -> str | None:
        """None when the server serves the broadcast endpoint, else why not."""
        why = self.server.wait_listening(60 if not self.cfg.quick else 30)
        if why:
            return why
        probe = self.measure_probe()
        if probe:
            return probe
        return None

    def measure_probe(self) -> str | None:
        n = 4
        res = self.pool.call(
            0, "connect", self.server.url_base, [("broadcast.bench-probe", n)], n, 20.0
        )
        if res["ok"] < n:
            return f"probe: {res['ok']}/{n} connected {res['errors']}"
        m = self.measure(
            {0: ["broadcast.bench-probe"]}, {"broadcast.bench-probe": 1}, 1, 0, timeout=20, stall=20
        )
        self.pool.call_all("close", [()] * self.pool.size)
        if m["status"] != "ok":
            return f"probe: {m['status_text']}; server log: {self.server.log_tail()}"
        time.sleep(0.3)
        return None

    def close_connections(self) -> None:
        self.pool.call_all("close", [()] * self.pool.size, timeout=60)

    def stop(self) -> None:
        try:
            self.close_connections()
        finally:
            self.server.stop()

    # -- measurements -----------------------------------------------------------------------
    def server_cpu(self) -> tuple[float, float]:
        backend = self.spec.backend_pids() if self.spec.backend_pids else self.redis_pids
        return procstat.cpu_seconds(self.server.pids()), procstat.cpu_seconds(backend)

    def rss(self) -> int:
        return procstat.rss_bytes(self.server.pids())

    def connect(
        self,
        plans: list[list[tuple[str, int]]] | list[list[tuple[str, int, str]]],
        concurrency: int | None = None,
        progress: Any = None,
    ) -> dict[str, Any]:
        conc = concurrency or self.cfg.connect_concurrency
        total = sum(entry[1] for plan in plans for entry in plan)
        timeout = max(60.0, total / 100)
        t0 = time.monotonic()
        cpu0 = self.server_cpu()[0]
        res = self.pool.call_all(
            "connect",
            [(self.server.url_base, plan, conc, self.cfg.connect_timeout) for plan in plans],
            timeout=timeout + 30,
            progress=progress,
        )
        seconds = time.monotonic() - t0
        cpu1 = self.server_cpu()[0]
        ok = sum(r["ok"] for r in res)
        errors = _merge_counts(r["errors"] for r in res)
        return {
            "ok": ok,
            "failed": total - ok,
            "errors": errors,
            "seconds": seconds,
            "conn_per_s": ok / seconds if seconds > 0 else 0.0,
            "server_cpu_us_per_conn": (cpu1 - cpu0) * 1e6 / ok if ok else None,
        }

    def measure(
        self,
        publishers: dict[int, list[str]],
        expect: dict[str, int],
        count: int,
        rate: float,
        timeout: float,
        stall: float,
        progress: Any = None,
    ) -> dict[str, Any]:
        """Arm the workers, publish, wait until every expected delivery arrived (or the run
        collapsed or stalled), and count. ``progress(seconds, delivered, expected)`` is called
        every 5 s while it waits."""
        pool = self.pool
        self.run_id += 1
        run = self.run_id
        armed = pool.call_all("arm", [(run, expect)] * pool.size)
        expected = sum(a["expected"] for a in armed)
        cpu0, rcpu0 = self.server_cpu()
        ccpu0 = procstat.cpu_seconds(pool.pids)
        t0 = time.monotonic()
        pub_rids = {
            w: pool.send(w, "publish", run, topics, count, rate, self.cfg.msg_size)
            for w, topics in publishers.items()
        }
        pub_done: dict[int, Any] = {}
        received, last_progress = 0, t0
        idle_since: float | None = None
        idle_cpu = 0.0
        why = "collapsed"
        tick = t0 + 5.0
        while True:
            time.sleep(0.05)
            now = time.monotonic()
            for w, rid in pub_rids.items():
                if w not in pub_done and rid in pool._stash[w]:
                    pub_done[w] = pool.wait(w, rid, 1)
            stats = pool.call_all("stats", [()] * pool.size, timeout=30)
            got = sum(s["received"] for s in stats)
            if progress is not None and now >= tick:
                progress(now - t0, got, expected)
                tick = now + 5.0
            if got >= expected:
                received = got
                why = "complete"
                break
            if not self.server.alive():
                why = "server died"
                break
            publishing = len(pub_done) < len(pub_rids)
            if got > received or publishing:
                idle_since = None
            elif now - last_progress > stall:
                # no delivery for a while: lost if the server is idle too, slow if it is busy
                cpu_now = self.server_cpu()
                if idle_since is None:
                    idle_since, idle_cpu = now, sum(cpu_now)
                elif now - idle_since >= 2.0:
                    busy = (sum(cpu_now) - idle_cpu) / (now - idle_since)
                    if busy < 0.05:
                        why = "stalled"
                        break
                    idle_since = None
            if got > received:
                received, last_progress = got, now
            if now - t0 > timeout:
                why = "collapsed"
                break
        if why == "complete":
            time.sleep(0.1)  # a short grace period to catch duplicates
        elapsed = time.monotonic() - t0
        cpu1, rcpu1 = self.server_cpu()
        ccpu1 = procstat.cpu_seconds(pool.pids)
        for w, rid in pub_rids.items():
            if w not in pub_done:
                try:
                    pub_done[w] = pool.wait(w, rid, 30)
                except Exception as exc:
                    pub_done[w] = {"error": str(exc), "first_send": 0, "sent": 0}
        res = pool.call_all("collect", [()] * pool.size, timeout=60)
        first_send = min((p["first_send"] for p in pub_done.values() if p["first_send"]), default=0)
        last_recv = max((r["last_recv"] for r in res), default=0)
        delivered = sum(r["received"] for r in res)
        out: dict[str, Any] = {
            "expected": expected,
            "delivered": delivered,
            "missing": sum(r["missing"] for r in res),
            "conns_with_loss": sum(r["conns_with_loss"] for r in res),
            "dups": sum(r["dups"] for r in res),
            "reorders": sum(r["reorders"] for r in res),
            "stale": sum(r["stale"] for r in res),
            "wrong_topic": sum(r["wrong_topic"] for r in res),
            "disconnects": sum(r["disconnects"] for r in res),
            "close_codes": _merge_counts(r["close_codes"] for r in res),
            "sent": sum(p.get("sent", 0) for p in pub_done.values()),
            "seconds": elapsed,
        }
        span = (last_recv - first_send) / 1e9 if last_recv and first_send else 0.0
        out["deliveries_per_s"] = delivered / span if span > 0 else None
        # per message (sequence number): first to last delivery over every subscriber
        firsts: dict[int, int] = {}
        lasts: dict[int, int] = {}
        for r in res:
            for seq, t in r["seq_first"].items():
                firsts[seq] = min(t, firsts.get(seq, t))
            for seq, t in r["seq_last"].items():
                lasts[seq] = max(t, lasts.get(seq, t))
        out["spread_ms"] = [(lasts[q] - firsts[q]) / 1e6 for q in sorted(firsts)]
        out["server_cpu_s"] = (cpu1 - cpu0) + (rcpu1 - rcpu0)
        out["redis_cpu_s"] = rcpu1 - rcpu0
        out["server_cpu_us"] = out["server_cpu_s"] * 1e6 / delivered if delivered else None
        out["client_cpu_us"] = (ccpu1 - ccpu0) * 1e6 / delivered if delivered else None
        out.update(latency_summary([r["lat"] for r in res]))
        pct = 100.0 * delivered / expected if expected else 0.0
        out["delivered_pct"] = pct
        faults = []
        if out["missing"]:
            faults.append(f"{out['missing']} missing")
        if out["dups"]:
            faults.append(f"{out['dups']} duplicates")
        if out["reorders"]:
            faults.append(f"{out['reorders']} reordered")
        if out["wrong_topic"]:
            faults.append(f"{out['wrong_topic']} on the wrong topic")
        if out["disconnects"]:
            codes = ", ".join(f"{n}x {code}" for code, n in out["close_codes"].items())
            faults.append(f"{out['disconnects']} disconnected (close codes: {codes})")
        if why == "complete" and not faults:
            out["status"], out["status_text"] = "ok", "ok"
        elif why == "complete":
            out["status"], out["status_text"] = "failed", ", ".join(faults)
        elif why == "collapsed":
            out["status"] = "collapsed"
            out["status_text"] = f"collapsed: {pct:.1f}% delivered in {timeout:.0f} s"
        elif why == "stalled":
            out["status"] = "lost"
            out["status_text"] = (
                f"lost: {pct:.1f}% delivered, then nothing for {stall:.0f} s with the server idle"
                + (f" ({', '.join(faults)})" if faults else "")
            )
        else:
            out["status"] = "error"
            out["status_text"] = f"{why}: {pct:.1f}% delivered; {self.server.log_tail()}"
        return out


MEDIAN_KEYS = (
    "deliveries_per_s",
    "server_cpu_us",
    "client_cpu_us",
    "redis_cpu_s",
    "p50_ms",
    "p90_ms",
    "p99_ms",
    "max_ms",
)


def combine(reps: list[dict[str, Any]]) -> dict[str, Any]:
    """The row for repeated measurements: the median of each figure when all passed, else the
    first failed measurement as it is."""
    bad = [r for r in reps if r["status"] != "ok"]
    if bad:
        row = dict(bad[0])
    else:
        row = dict(reps[0])
        for key in MEDIAN_KEYS:
            vals = [r[key] for r in reps if r.get(key) is not None]
            row[key] = statistics.median(vals) if vals else None
        for key in ("expected", "delivered", "missing", "dups", "reorders"):
            row[key] = sum(r[key] for r in reps)
    row["repeats"] = len(reps)
    row["repeat_values"] = [
        {k: r.get(k) for k in ("deliveries_per_s", "server_cpu_us", "p50_ms", "p99_ms", "status")}
        for r in reps
    ]
    return row


# -- scenario runners -------------------------------------------------------------------------
def _merge_counts(counts: Any) -> dict[str, int]:
    merged: dict[str, int] = {}
    for one in counts:
        for key, n in one.items():
            merged[key] = merged.get(key, 0) + n
    return merged


def _connect_or_fail(s: Session, plans: list[list[tuple[str, int]]], n: int) -> dict[str, Any]:
    c = s.connect(plans)
    s.log(
        f"  {s.spec.name}: {c['ok']}/{n} connected in {c['seconds']:.1f} s "
        f"({c['conn_per_s']:.0f}/s)" + (f" errors {c['errors']}" if c["errors"] else "")
    )
    return c


def _connect_failed_row(c: dict[str, Any], n: int) -> dict[str, Any]:
    err = "; ".join(f"{v}x {k}" for k, v in list(c["errors"].items())[:3])
    return {
        "status": "collapsed",
        "status_text": f"collapsed: only {c['ok']}/{n} connections accepted ({err})",
        "delivered_pct": 0.0,
    }


def run_burst(s: Session, n: int) -> dict[str, Any]:
    cfg, pool = s.cfg, s.pool
    topic = "broadcast.bench-burst"
    time.sleep(0.5 * cfg.settle)
    base = s.rss()
    c = _connect_or_fail(s, [[(topic, k)] for k in split(n, pool.size)], n)
    row: dict[str, Any] = {"n": n, "topics": 1, "messages": cfg.burst_msgs}
    row["connect"] = c
    if c["failed"]:
        row.update(_connect_failed_row(c, n))
        return row
    time.sleep(1.0 * cfg.settle)
    row["rss_kib_per_conn"] = (s.rss() - base) / n / 1024
    reps = []
    for i in range(cfg.repeats):
        m = s.measure(
            {0: [topic]},
            {topic: cfg.burst_msgs},
            cfg.burst_msgs,
            0,
            cfg.collapse_timeout,
            cfg.stall_timeout,
        )
        reps.append(m)
        s.log(f"  {s.spec.name} burst N={n} #{i + 1}: {fmt_measure(m)}")
        if m["status"] != "ok" or m["seconds"] > cfg.repeat_budget:
            break
        time.sleep(0.3 * cfg.settle)
    row.update(combine(reps))
    return row


def run_steady(s: Session) -> dict[str, Any]:
    cfg, pool = s.cfg, s.pool
    topic, n = "broadcast.bench-steady", cfg.steady_n
    count = max(1, round(cfg.steady_rate * cfg.steady_seconds))
    c = _connect_or_fail(s, [[(topic, k)] for k in split(n, pool.size)], n)
    row: dict[str, Any] = {"n": n, "topics": 1, "messages": count, "rate": cfg.steady_rate}
    row["connect"] = c
    if c["failed"]:
        row.update(_connect_failed_row(c, n))
        return row
    time.sleep(0.5 * cfg.settle)
    drain = max(cfg.stall_timeout, 15.0 if not cfg.quick else 4.0)
    m = s.measure(
        {0: [topic]}, {topic: count}, count, cfg.steady_rate, cfg.steady_seconds + drain, drain
    )
    if m["status"] == "collapsed":
        m["status_text"] = (
            f"collapsed: {m['delivered_pct']:.1f}% delivered "
            f"{drain:.0f} s after the last of {count} messages"
        )
    s.log(f"  {s.spec.name} steady N={n} {cfg.steady_rate:g} msg/s: {fmt_measure(m)}")
    row.update(combine([m]))
    return row


def run_topics(s: Session) -> dict[str, Any]:
    cfg, pool = s.cfg, s.pool
    n, k = cfg.topics_conns, cfg.topics_count
    per_topic = split(n, k)
    # whole topics per client process, so each process publishes on topics it holds
    plans: list[list[tuple[str, int]]] = [[] for _ in range(pool.size)]
    for t in range(k):
        plans[t % pool.size].append((f"broadcast.bench-t{t}", per_topic[t]))
    c = _connect_or_fail(s, plans, n)
    row: dict[str, Any] = {"n": n, "topics": k, "messages": cfg.topics_msgs}
    row["connect"] = c
    if c["failed"]:
        row.update(_connect_failed_row(c, n))
        return row
    time.sleep(0.5 * cfg.settle)
    publishers = {w: [t for t, _ in plan] for w, plan in enumerate(plans) if plan}
    expect = {f"broadcast.bench-t{t}": cfg.topics_msgs for t in range(k)}
    reps = []
    for i in range(cfg.repeats):
        m = s.measure(
            publishers,
            expect,
            cfg.topics_msgs,
            0,
            cfg.collapse_timeout,
            cfg.stall_timeout,
        )
        reps.append(m)
        s.log(f"  {s.spec.name} topics {n} conns/{k} topics #{i + 1}: {fmt_measure(m)}")
        if m["status"] != "ok" or m["seconds"] > cfg.repeat_budget:
            break
        time.sleep(0.3 * cfg.settle)
    row.update(combine(reps))
    return row


def run_connrate(s: Session) -> dict[str, Any]:
    cfg, pool = s.cfg, s.pool
    n = cfg.connrate_n
    row: dict[str, Any] = {"n": n, "topics": 1, "messages": 0}
    rates, cpus, results = [], [], []
    for i in range(cfg.repeats if not cfg.quick else 1):
        c = s.connect([[("broadcast.bench-conn", k)] for k in split(n, pool.size)], concurrency=100)
        results.append(c)
        s.log(
            f"  {s.spec.name} connrate #{i + 1}: {c['ok']}/{n} in {c['seconds']:.2f} s = "
            f"{c['conn_per_s']:.0f}/s"
            + (f", {c['server_cpu_us_per_conn']:.0f} µs CPU/conn" if c["ok"] else "")
        )
        pool.call_all("close", [()] * pool.size, timeout=60)
        if c["failed"]:
            row.update(_connect_failed_row(c, n))
            row["connect"] = c
            return row
        rates.append(c["conn_per_s"])
        cpus.append(c["server_cpu_us_per_conn"])
        time.sleep(1.0 * cfg.settle)
    row.update(
        status="ok",
        status_text="ok",
        conn_per_s=statistics.median(rates),
        server_cpu_us_per_conn=statistics.median(cpus),
        repeats=len(rates),
        connect=results,
    )
    return row


def fmt_measure(m: dict[str, Any]) -> str:
    parts = [m["status_text"]]
    if m.get("deliveries_per_s"):
        parts.append(f"{m['deliveries_per_s']:,.0f} deliveries/s")
    if m.get("server_cpu_us") is not None:
        parts.append(f"{m['server_cpu_us']:.1f} µs CPU/delivery")
    if m.get("p50_ms") == m.get("p50_ms"):  # not NaN
        parts.append(f"p50 {m['p50_ms']:.1f} ms p99 {m['p99_ms']:.1f} ms")
    return ", ".join(parts)


def conns_of(scenario: str, cfg: Config, n: int | None = None) -> int:
    return {
        "burst": n or 0,
        "steady": cfg.steady_n,
        "topics": cfg.topics_conns,
        "connrate": cfg.connrate_n,
    }[scenario]


def params_of(scenario: str, cfg: Config) -> dict[str, Any]:
    """The fixed parameters of a scenario (for rows that were skipped or unavailable too)."""
    if scenario == "burst":
        return {"topics": 1, "messages": cfg.burst_msgs}
    if scenario == "steady":
        count = max(1, round(cfg.steady_rate * cfg.steady_seconds))
        return {"topics": 1, "messages": count, "rate": cfg.steady_rate}
    if scenario == "topics":
        return {"topics": cfg.topics_count, "messages": cfg.topics_msgs}
    return {"topics": 1, "messages": 0}
