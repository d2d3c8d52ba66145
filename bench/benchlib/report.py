"""Results: one JSON file per run, a Markdown report and PNG charts."""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

from .servers import BENCH, PEERS, REPO

REF_CHANNELS = "channels-memory"
REF_NODE = "node-ws"


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                info["mem_gib"] = round(int(line.split()[1]) / 2**20, 1)
    except OSError:
        pass
    versions = {}
    for dist in ("Django", "channels", "channels_redis", "uvicorn", "websockets", "picows"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    if shutil.which("node"):
        try:
            versions["node"] = subprocess.run(
                ["node", "--version"], capture_output=True, text=True, timeout=10
            ).stdout.strip()
            pkg = PEERS / "node_ws" / "node_modules" / "ws" / "package.json"
            versions["ws (npm)"] = json.loads(pkg.read_text())["version"]
        except (OSError, subprocess.SubprocessError, ValueError, KeyError):
            pass
    info["versions"] = versions
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        info["git_commit"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=10,
        ).stdout.strip()
    return info


def run_dirs(out: Path | None, quick: bool, logs: str) -> tuple[dt.datetime, str, Path, Path]:
    """A run's start (UTC) and its stamp, the directory its results go to (``out``, by default
    bench/results/, or bench/results/tmp/ for a quick run; created) and the one for its servers'
    logs (bench/results/tmp/<logs>-<stamp>)."""
    now = dt.datetime.now(dt.UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    out_dir = out or (BENCH / "results" / ("tmp" if quick else ""))
    out_dir.mkdir(parents=True, exist_ok=True)
    return now, stamp, out_dir, BENCH / "results" / "tmp" / f"{logs}-{stamp}"


def write_json(path: Path, doc: dict[str, Any]) -> None:
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")


# -- formatting -------------------------------------------------------------------------------
def _num(v: Any, digits: int = 0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.{digits}f}"


def _lat(v: Any) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.1f}" if v < 100 else f"{v:,.0f}"


def _ratio(v: Any, ref_row: dict[str, Any] | None, key: str) -> str:
    """v / the reference's figure; marked with a dagger when the reference run failed."""
    ref = (ref_row or {}).get(key)
    if not v or not ref:
        return "-"
    r = v / ref
    text = f"{r:.3f}x" if r < 0.1 else f"{r:.2f}x" if r < 10 else f"{r:.0f}x"
    return text if ref_row.get("status") == "ok" else text + " †"


def _cell(text: str) -> str:
    return str(text).replace("|", "/").replace("\n", " ")


def _key(row: dict[str, Any]) -> tuple[str, Any]:
    return row["scenario"], row.get("n")


def _refs(rows: list[dict[str, Any]], name: str) -> dict[tuple[str, Any], dict[str, Any]]:
    return {
        _key(r): r
        for r in rows
        if r["server"] == name and r.get("status") not in ("unavailable", "skipped", "error")
    }


def _loss(row: dict[str, Any]) -> str:
    status = row.get("status")
    if status == "ok":
        return "0"
    if status in ("unavailable", "skipped"):
        return "-"
    text = row.get("status_text", status or "?")
    return f"**{_cell(text)}**"


def _scenario_label(row: dict[str, Any]) -> str:
    s = row["scenario"]
    if s == "burst":
        return f"burst {row.get('messages', '?')} msgs"
    if s == "steady":
        rate = row.get("rate")
        return f"steady {rate:g} msg/s x {row.get('messages', '?')}" if rate else "steady"
    if s == "topics":
        return f"{row.get('topics', '?')} topics x {row.get('messages', '?')} msgs"
    return s


def markdown(doc: dict[str, Any]) -> str:
    rows = doc["rows"]
    meta = doc["meta"]
    ch, nd = _refs(rows, REF_CHANNELS), _refs(rows, REF_NODE)
    m = meta.get("machine", {})
    out = [
        f"# Megaphone benchmark, {meta['date']}",
        "",
        f"Command: `{meta['command']}`; {meta.get('mode', 'full')} mode; "
        f"load client: {meta.get('client_procs')} processes (picows on uvloop).",
        f"Machine: {m.get('cpus')} CPUs ({m.get('cpu', '?')}), {m.get('mem_gib', '?')} GiB, "
        f"Linux {m.get('kernel', '?')}, Python {m.get('python', '?')}.",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m.get("versions", {}).items()) + ".",
        "",
        "- N conns: connections on the topic(s), the publisher's included (it gets its own "
        "messages back, as every client does). Deliveries: messages received, all clients.",
        "- Deliveries/s: deliveries / (last receive - first send).",
        "- Server CPU per delivery: user+system CPU of every server process (and of Redis when "
        "the server uses it) / deliveries.",
        "- CPU xChannels, CPU xNode: this server's CPU per delivery divided by that of the "
        "Channels tutorial (in-memory layer) and of Node `ws` in the same scenario; below 1 is "
        "cheaper. † marks a reference run that lost messages or collapsed: its figure covers "
        "only what it delivered.",
        "- Latency: publish to receive, over every delivery; in a burst it is mostly queueing "
        "behind the burst itself.",
        f"- Burst and topics rows: median of up to {meta.get('repeats', 3)} repeats on the same "
        "connections. Loss: any missing, duplicated or reordered delivery fails the run.",
        "",
        "| server | scenario | N conns | deliveries/s | server CPU µs/delivery | CPU xChannels "
        "| CPU xNode | p50 ms | p99 ms | RSS KiB/conn | client CPU µs/delivery | loss |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|--:|---|",
    ]
    said_unavailable: set[str] = set()
    for r in rows:
        if r["scenario"] == "connrate":
            continue
        if r.get("status") == "unavailable":
            mine = [x for x in rows if x["server"] == r["server"]]
            if all(x.get("status") == "unavailable" for x in mine):
                if r["server"] not in said_unavailable:
                    said_unavailable.add(r["server"])
                    out.append(
                        f"| {r['label']} | all | | unavailable: "
                        f"{_cell(r.get('status_text', ''))} | | | | | | | | |"
                    )
                continue
        if r.get("status") in ("unavailable", "skipped"):
            out.append(
                f"| {r['label']} | {_scenario_label(r)} | {_num(r.get('n'))} | "
                f"{r['status']}: {_cell(r.get('status_text', ''))} | | | | | | | | |"
            )
            continue
        cpu = r.get("server_cpu_us")
        out.append(
            "| "
            + " | ".join(
                [
                    r["label"],
                    _scenario_label(r),
                    _num(r.get("n")),
                    _num(r.get("deliveries_per_s")),
                    _num(cpu, 1),
                    _ratio(cpu, ch.get(_key(r)), "server_cpu_us"),
                    _ratio(cpu, nd.get(_key(r)), "server_cpu_us"),
                    _lat(r.get("p50_ms")),
                    _lat(r.get("p99_ms")),
                    _num(r.get("rss_kib_per_conn"), 1),
                    _num(r.get("client_cpu_us"), 1),
                    _loss(r),
                ]
            )
            + " |"
        )
    idle = [r for r in rows if r["scenario"] == "burst" and r.get("rss_kib_per_conn")]
    if idle:
        ns = sorted({r["n"] for r in idle})
        out += [
            "",
            "## Idle memory per connection",
            "",
            "RSS of every server process with N idle connections open, minus its RSS before they "
            "connected, divided by N (measured in the burst scenario, before the first message).",
            "",
            "| server | " + " | ".join(f"KiB/conn at N={n:,}" for n in ns) + " |",
            "|---|" + "--:|" * len(ns),
        ]
        for name in dict.fromkeys(r["server"] for r in idle):
            by_n = {r["n"]: r for r in idle if r["server"] == name}
            label = next(r["label"] for r in idle if r["server"] == name)
            cells = [_num(by_n.get(n, {}).get("rss_kib_per_conn"), 1) for n in ns]
            out.append(f"| {label} | " + " | ".join(cells) + " |")
    conn_rows = [r for r in rows if r["scenario"] == "connrate"]
    if conn_rows:
        out += [
            "",
            "## Connection rate",
            "",
            "N connections opened with 100 attempts in flight per client process; median of "
            "repeats. Server CPU per connection covers the handshake and registration.",
            "",
            "| server | N | connections/s | xChannels | xNode | server CPU µs/conn | status |",
            "|---|--:|--:|--:|--:|--:|---|",
        ]
        for r in conn_rows:
            rate = r.get("conn_per_s")
            out.append(
                f"| {r['label']} | {_num(r.get('n'))} | {_num(rate)} | "
                f"{_ratio(rate, ch.get(_key(r)), 'conn_per_s')} | "
                f"{_ratio(rate, nd.get(_key(r)), 'conn_per_s')} | "
                f"{_num(r.get('server_cpu_us_per_conn'))} | "
                f"{r.get('status')}"
                f"{': ' + _cell(r['status_text']) if r.get('status') != 'ok' else ''} |"
            )
    ceiling = client_ceiling(doc)
    if ceiling:
        out += ["", "## Load client ceiling", "", ceiling]
    charts = doc.get("charts") or []
    if charts:
        out += ["", "## Charts", ""] + [f"![{Path(c).stem}]({Path(c).name})" for c in charts]
    return "\n".join(out) + "\n"


def client_ceiling(doc: dict[str, Any]) -> str:
    rows = [r for r in doc["rows"] if r.get("status") == "ok" and r.get("client_cpu_us")]
    if not rows:
        return ""
    node = [r for r in rows if r["server"] == REF_NODE and r["scenario"] == "burst"]
    best = max(rows, key=lambda r: r.get("deliveries_per_s") or 0)
    ref = node or [best]
    cpu = sorted(r["client_cpu_us"] for r in ref)[len(ref) // 2]
    procs = doc["meta"].get("client_procs", 1)
    cores = min(procs, os.cpu_count() or 1)
    cheapest = min(rows, key=lambda r: r["client_cpu_us"])
    return (
        f"The client spends {cpu:.1f} µs of CPU per delivery when every frame arrives in its own "
        f"segment (median over the {'Node ws' if node else 'fastest'} burst runs), so on "
        f"{cores} core(s) it could take at most ~{cores * 1e6 / cpu:,.0f} such deliveries/s with "
        f"the server using no CPU at all. Frames a server writes together arrive together and "
        f"cost the client less: {cheapest['client_cpu_us']:.1f} µs per delivery in the cheapest "
        f"run ({cheapest['label']}, {cheapest['scenario']} N={cheapest.get('n')}), which lifts "
        f"the ceiling to ~{cores * 1e6 / cheapest['client_cpu_us']:,.0f}/s. The fastest run "
        f"reached {best['deliveries_per_s']:,.0f} deliveries/s ({best['label']}, "
        f"{best['scenario']} N={best.get('n')}). Client and server share the same cores, so "
        "compare servers by CPU per delivery rather than by deliveries/s."
    )


# -- charts -----------------------------------------------------------------------------------
def charts(doc: dict[str, Any], out_dir: Path, stem: str) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    rows = doc["rows"]
    made = []
    servers = list(dict.fromkeys(r["server"] for r in rows))
    labels = {r["server"]: r["label"] for r in rows}

    burst = [r for r in rows if r["scenario"] == "burst" and r.get("status") == "ok"]
    if burst:
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
        for s in servers:
            pts = sorted((r["n"], r) for r in burst if r["server"] == s)
            if not pts:
                continue
            xs = [p[0] for p in pts]
            axes[0].plot(xs, [p[1]["server_cpu_us"] for p in pts], "o-", label=labels[s])
            axes[1].plot(xs, [p[1]["deliveries_per_s"] for p in pts], "o-", label=labels[s])
        axes[0].set(
            xscale="log",
            yscale="log",
            xlabel="subscribers N",
            ylabel="server CPU µs per delivery",
            title="Burst fan-out: CPU per delivery (lower is better)",
        )
        axes[1].set(
            xscale="log",
            xlabel="subscribers N",
            ylabel="deliveries/s",
            title="Burst fan-out: deliveries/s",
        )
        for ax in axes:
            ax.grid(True, which="both", alpha=0.3)
        axes[0].legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem}-burst.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(str(path))

    lat_rows = [
        r
        for r in rows
        if r.get("status") == "ok" and r["scenario"] in ("steady", "burst") and r.get("p50_ms")
    ]
    if lat_rows:
        groups = []
        steady = [r for r in lat_rows if r["scenario"] == "steady"]
        if steady:
            groups.append(("steady rate", steady))
        ns = sorted({r["n"] for r in lat_rows if r["scenario"] == "burst"})
        if ns:
            groups.append((f"burst N={ns[0]}", [r for r in lat_rows if r.get("n") == ns[0]]))
        fig, axes = plt.subplots(1, len(groups), figsize=(6 * len(groups), 4.5), squeeze=False)
        for ax, (title, grp) in zip(axes[0], groups, strict=True):
            names = [r["label"] for r in grp]
            xs = range(len(grp))
            for i, (pct, off) in enumerate((("p50_ms", -0.27), ("p90_ms", 0), ("p99_ms", 0.27))):
                ax.bar(
                    [x + off for x in xs],
                    [r.get(pct) or 0 for r in grp],
                    width=0.27,
                    label=pct[:3],
                    color=f"C{i}",
                )
            ax.set_xticks(list(xs), names, rotation=20, ha="right", fontsize=8)
            ax.set(yscale="log", ylabel="publish-to-receive latency, ms", title=title)
            ax.grid(True, axis="y", which="both", alpha=0.3)
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / f"{stem}-latency.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        made.append(str(path))
    return made


def print_summary(doc: dict[str, Any], file: Any = sys.stderr) -> None:
    for r in doc["rows"]:
        if r["scenario"] == "connrate":
            extra = f"{_num(r.get('conn_per_s'))} conn/s"
        else:
            extra = (
                f"{_num(r.get('deliveries_per_s'))} deliveries/s, "
                f"{_num(r.get('server_cpu_us'), 1)} µs CPU/delivery, "
                f"p50 {_lat(r.get('p50_ms'))} ms, p99 {_lat(r.get('p99_ms'))} ms"
            )
        n = r.get("n")
        if r.get("status") not in ("ok", "collapsed", "lost", "failed"):
            extra = r.get("status_text", "")
        print(
            f"  {r['server']:16} {r['scenario']:8} N={n if n is not None else '-':<6} "
            f"{r.get('status', '?'):11} {extra}",
            file=file,
        )


# -- bench/hundred_k.py -----------------------------------------------------------------------
def _pair(d: dict[str, Any] | None, digits: int = 1) -> str:
    """'median / max' of a summary() dict."""
    if not d:
        return "-"
    return f"{d['median']:,.{digits}f} / {d['max']:,.{digits}f}"


def _failures(c: dict[str, Any] | None) -> str:
    """Connections that never opened, then failed attempts by kind."""
    if not c:
        return "-"
    by_count = sorted(c["errors"].items(), key=lambda kv: -kv[1])
    kinds = "; ".join(f"{n}x {_cell(k)}" for k, n in by_count)
    return f"{c['failed']:,}" + (f" ({kinds})" if kinds else "")


def _faults(m: dict[str, Any] | None) -> str:
    if not m:
        return "-"
    return f"{m['missing']:,} / {m['dups']:,} / {m['reorders']:,}"


def _busy(c: dict[str, Any] | None) -> str:
    """How busy the server was while connecting: which side set the connection rate."""
    if not c or not c.get("server_cpu_us_per_conn"):
        return "-"
    return f"{c['server_cpu_us_per_conn'] * c['conn_per_s'] / 1e4:.0f}%"


def _unit(v: Any, unit: str, digits: int = 0) -> str:
    text = _num(v, digits)
    return text if text == "-" else f"{text}{unit}"


def _fanout(r: dict[str, Any]) -> str:
    """The server's own fan-out time per broadcast: Node's, or Megaphone's per loop turn."""
    if r.get("server_fanout_ms"):
        return f"{_pair(r['server_fanout_ms'])} ms"
    if r.get("server_turns_ms"):
        return f"{r['server_turns_ms']['mean']:,.1f} ms mean per turn"
    return "-"


def _row(cells: list[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def hundred_k_markdown(doc: dict[str, Any]) -> str:
    meta, rows = doc["meta"], doc["rows"]
    sizes = meta["sizes"]
    mach = meta.get("machine", {})
    lines = [
        f"# Megaphone bench-100k, {meta['date']} ({meta['mode']})",
        "",
        f"`{meta['command']}`: per server, {sizes['n']:,} connections on one topic, at most "
        f"{sizes['per_addr']:,} per loopback source address, then {sizes['broadcasts']} "
        f"broadcasts one every {sizes['interval']:g} s, then every connection reset at once and "
        f"reconnected (the storm), then one more broadcast. {meta['client_procs']} client "
        f"processes (picows); {mach.get('cpus', '?')} CPUs ({mach.get('cpu', '?')}), "
        f"commit {mach.get('git_commit', '?')}. RLIMIT_NOFILE {meta['rlimit_nofile']}; "
        f"somaxconn {meta['sysctl'].get('net.core.somaxconn')}, listen backlog 4096.",
        "",
        "Connections:",
        "",
        "| server | connected | connects/s | server busy | never connected (failed attempts) "
        "| RSS/conn | CPU/conn | idle CPU | storm | storm CPU/conn | storm: never reconnected "
        "(failed attempts) | status |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        c, st = r.get("connect"), r.get("storm")
        lines.append(
            _row(
                [
                    f"{r['server']} ({r.get('label', '')})",
                    _num(c["ok"]) if c else "-",
                    _num(c["conn_per_s"]) if c else "-",
                    _busy(c),
                    _failures(c),
                    _unit(r.get("rss_kib_per_conn"), " KiB", 1),
                    _unit(r.get("cpu_us_per_conn"), " µs"),
                    _unit(r.get("idle_cpu_pct"), "%", 1),
                    f"{st['seconds']:.1f} s" if st else "-",
                    f"{_num(st.get('server_cpu_us_per_conn'))} µs" if st else "-",
                    _failures(st),
                    _cell(r.get("status_text", r.get("status", "?"))),
                ]
            )
        )
    lines += [
        "",
        "Broadcasts:",
        "",
        "| server | deliveries | p50 | p99 | spread, client (median / max) | fan-out, server "
        "(median / max) | CPU/delivery (net of idle) | lost / dup / reordered | after the storm |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        m, v = r.get("broadcast"), r.get("after_storm")
        if not m:
            continue
        lines.append(
            _row(
                [
                    r["server"],
                    f"{_num(m['delivered'])} / {_num(m['expected'])}",
                    f"{_lat(m.get('p50_ms'))} ms",
                    f"{_lat(m.get('p99_ms'))} ms",
                    f"{_pair(r.get('spread_ms'))} ms" if r.get("spread_ms") else "-",
                    _fanout(r),
                    f"{_num(r.get('cpu_us_per_delivery'), 1)} "
                    f"({_num(r.get('cpu_us_per_delivery_net'), 1)}) µs",
                    _faults(m),
                    _cell(v["status_text"]) if v else "-",
                ]
            )
        )
    ref = next((r for r in rows if r["server"] == REF_NODE and r.get("connect")), None)
    if ref:
        ref_flat = dict(_flat_100k(ref), status=ref.get("status"))
        keys = ("rss", "cpu", "rate", "idle", "storm", "storm_cpu", "p50", "p99", "spread", "cpu_d")
        lines += [
            "",
            "Ratios to Node `ws` (same run, same client; below 1 is better, except connects/s):",
            "",
            "| server | RSS/conn | CPU/conn | connects/s | idle CPU | storm | storm CPU/conn | p50 "
            "| p99 | spread max | CPU/delivery net |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            f = _flat_100k(r)
            if r["server"] == REF_NODE or not f.get("rss"):
                continue
            lines.append(_row([r["server"], *(_ratio(f.get(k), ref_flat, k) for k in keys)]))
    lines += [
        "",
        " ".join(
            [
                "RSS/conn: server RSS growth over the connected count, all server processes.",
                "CPU/conn: server CPU (utime + stime, /proc) while connecting, over the",
                "connected count; server busy: that CPU over the connecting time, in % of one",
                "core (well below 100%: something else held the rate back, the load client or",
                "the other processes on the machine's cores).",
                "Idle CPU: the server with every connection open and no traffic.",
                "Storm: from the first reset to the last connection open again; its CPU",
                "includes closing the old connections.",
                "p50/p99: publish to receive, every delivery of the broadcasts.",
                "Spread: per broadcast, first to last receive over all clients (client side).",
                "Fan-out, server: per broadcast, receipt to the last send() returning, printed",
                "by the Node peer (--fanout-timing); for Megaphone, the mean of",
                "megaphone_fanout_seconds on /metrics over the broadcasts: per event-loop turn",
                "that delivered, from the hub holding the first frame to the last connection's",
                "write (a broadcast is one turn, unless connections fell behind and their",
                "frames went through their outboxes).",
                "CPU/delivery: server CPU over the broadcast phase per delivery; net: less the",
                "idle CPU of the same time.",
            ]
        ),
    ]
    return "\n".join(lines) + "\n"


def _flat_100k(r: dict[str, Any]) -> dict[str, Any]:
    c, m, st = r.get("connect") or {}, r.get("broadcast") or {}, r.get("storm") or {}
    return {
        "rss": r.get("rss_kib_per_conn"),
        "cpu": r.get("cpu_us_per_conn"),
        "rate": c.get("conn_per_s"),
        "idle": r.get("idle_cpu_pct"),
        "storm": st.get("seconds"),
        "storm_cpu": st.get("server_cpu_us_per_conn"),
        "p50": m.get("p50_ms"),
        "p99": m.get("p99_ms"),
        "spread": (r.get("spread_ms") or {}).get("max"),
        "cpu_d": r.get("cpu_us_per_delivery_net"),
    }
