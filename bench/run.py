"""Megaphone benchmark harness: `make bench` (full, ~20 min) and `make bench-quick` (< 1 min).

Starts every server under test on a free 127.0.0.1 port, drives it with a multi-process picows load
client, and writes bench/results/<UTC timestamp>.json, .md and .png. See docs/benchmarks.md.

Exit status: 0 when every Megaphone measurement delivered every message exactly once and in order;
1 when one of them lost, duplicated or reordered messages, collapsed or errored (and with --strict,
also when Megaphone could not be started at all); 2 on a harness error or interruption.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any

from benchlib import deps, report
from benchlib.backends import private_backend
from benchlib.client import ClientPool, raise_nofile
from benchlib.scenarios import (
    SCENARIOS,
    Config,
    Log,
    Session,
    conns_of,
    params_of,
    run_burst,
    run_connrate,
    run_steady,
    run_topics,
)
from benchlib.servers import ServerSpec, all_servers, pick_servers, unavailable_reason

QUICK_SERVERS = ("node-ws", "websockets", "megaphone", "megaphone-native")


class Deadline(Exception):
    pass


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes, a few servers: a smoke test")
    p.add_argument("--servers", help="comma-separated server names (see --list)")
    p.add_argument("--scenarios", help=f"comma-separated, from: {', '.join(SCENARIOS)}")
    p.add_argument("--burst-ns", help="burst sizes, e.g. 1000,5000,10000")
    p.add_argument("--repeats", type=int, help="repeats per burst (median reported)")
    p.add_argument("--client-procs", type=int, default=max(2, os.cpu_count() or 2))
    p.add_argument("--redis-db", type=int, default=11, help="Redis DB for Megaphone (+1 Channels)")
    p.add_argument("--out", type=Path, help="results directory (default bench/results)")
    p.add_argument("--strict", action="store_true", help="fail when Megaphone is unavailable")
    p.add_argument("--time-limit", type=float, help="abort the whole run after this many seconds")
    p.add_argument("--list", action="store_true", help="list servers and scenarios, then exit")
    return p.parse_args(argv)


def run_server(
    spec: ServerSpec,
    unavailable: str | None,
    scenarios: list[str],
    cfg: Config,
    state: dict[str, Any],
    new_pool: Any,
    rows: list[dict[str, Any]],
    log: Log,
    log_dir: Path,
) -> None:
    """Every scenario on one server: a fresh server per measurement (in quick mode, one server
    for all of them). Appends one row per scenario and N."""
    base = {"server": spec.name, "label": spec.label}
    steps = [(scen, n) for scen in scenarios for n in (cfg.burst_ns if scen == "burst" else [0])]
    if unavailable:
        log(f"{spec.name}: unavailable: {unavailable}")
        for scen, n in steps:
            rows.append({**base, "scenario": scen, "n": conns_of(scen, cfg, n) or None,
                         **params_of(scen, cfg),
                         "status": "unavailable", "status_text": unavailable})  # fmt: skip
        return
    collapsed_at: int | None = None
    started_once = False
    session: Session | None = None
    try:
        for i, (scen, n) in enumerate(steps):
            conns = conns_of(scen, cfg, n)
            row: dict[str, Any] = {**base, "scenario": scen, "n": conns, **params_of(scen, cfg)}
            # after a collapse on one topic, a bigger or steadier load on one topic is hopeless;
            # the many-topics and connection-rate scenarios load a server differently: still run
            if collapsed_at is not None and conns >= collapsed_at and scen in ("burst", "steady"):
                row.update(
                    status="skipped",
                    status_text=f"collapsed at {collapsed_at} connections already",
                )
                log(f"{spec.name} {scen} N={conns}: skipped ({row['status_text']})")
                rows.append(row)
                continue
            t0 = time.monotonic()
            try:
                problem = None
                if session is None:
                    log(f"{spec.name} {scen} N={conns}: starting server")
                    session = Session(spec, state["pool"], cfg, log, log_dir)
                    problem = session.start()
                else:
                    log(f"{spec.name} {scen} N={conns}: same server")
                    session.pool = state["pool"]
                if problem:
                    # a server that never started is unavailable (e.g. a backend not written
                    # yet); one that started before and now fails has an error
                    first = not started_once and spec.name != "megaphone"
                    row.update(
                        status="unavailable" if first else "error",
                        status_text=f"server did not start: {problem}",
                    )
                    log(f"{spec.name}: {row['status_text']}")
                else:
                    started_once = True
                    runner = {"steady": run_steady, "topics": run_topics}
                    if scen == "burst":
                        row.update(run_burst(session, conns))
                    elif scen == "connrate":
                        row.update(run_connrate(session))
                    else:
                        row.update(runner[scen](session))
            except (KeyboardInterrupt, Deadline):
                raise
            except Exception as exc:
                row.update(status="error", status_text=f"harness error: {exc}")
                log(f"{spec.name} {scen}: harness error\n{traceback.format_exc()}")
                if not all(p.is_alive() for p in state["pool"].procs):
                    new_pool()
            finally:
                reuse = cfg.quick and row.get("status") in ("ok", None) and session is not None
                if session is not None:
                    try:
                        if reuse and session.server.alive():
                            session.close_connections()
                        else:
                            session.stop()
                            session = None
                    except Exception as exc:
                        log(f"{spec.name}: cleanup problem: {exc}")
                        with contextlib.suppress(Exception):
                            session.server.stop()
                        session = None
                        new_pool()
            row["wall_s"] = round(time.monotonic() - t0, 1)
            rows.append(row)
            if row.get("status") in ("collapsed", "lost") and scen in ("burst", "steady"):
                collapsed_at = min(conns, collapsed_at or conns)
            if row.get("status") == "unavailable":
                for rest, rn in steps[i + 1 :]:
                    rows.append({**base, "scenario": rest, "n": conns_of(rest, cfg, rn),
                                 **params_of(rest, cfg),
                                 "status": "unavailable",
                                 "status_text": row["status_text"]})  # fmt: skip
                return
    finally:
        if session is not None:
            session.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = Config.quick_config() if args.quick else Config()
    if args.burst_ns:
        cfg.burst_ns = [int(x) for x in args.burst_ns.split(",") if x.strip()]
    if args.repeats:
        cfg.repeats = args.repeats
    servers = all_servers(args.redis_db)
    if args.list:
        for s in servers:
            print(f"{s.name:16} {s.label}")
        print("scenarios:", ", ".join(SCENARIOS))
        return 0
    if args.servers:
        servers = pick_servers(servers, args.servers)
    elif args.quick:
        servers = [s for s in servers if s.name in QUICK_SERVERS]
    scenarios = list(SCENARIOS)
    if args.scenarios:
        scenarios = [x.strip() for x in args.scenarios.split(",") if x.strip()]
        bad = [x for x in scenarios if x not in SCENARIOS]
        if bad:
            print(f"unknown scenario(s) {bad}; known: {SCENARIOS}", file=sys.stderr)
            return 2

    log = Log()
    now, stamp, out_dir, log_dir = report.run_dirs(args.out, args.quick, "logs")
    limit = args.time_limit or (150 if args.quick else 45 * 60)

    def on_alarm(signum: int, frame: Any) -> None:
        raise Deadline(f"time limit of {limit:.0f} s reached")

    def on_term(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(int(limit))

    nofile = raise_nofile()
    log(
        f"megaphone bench ({'quick' if args.quick else 'full'}): servers "
        f"{', '.join(s.name for s in servers)}; scenarios {', '.join(scenarios)}; "
        f"{args.client_procs} client processes; RLIMIT_NOFILE {nofile}"
    )
    still_missing = deps.ensure_pip(log)
    if any(m.startswith("picows") for m in still_missing):
        log("picows (the load client) is missing and could not be installed")
        return 2
    node_problem = None
    if any(s.name == "node-ws" for s in servers):
        node_problem = deps.ensure_node_ws(log)

    rows: list[dict[str, Any]] = []
    doc: dict[str, Any] = {
        "meta": {
            "date": now.strftime("%Y-%m-%d %H:%M UTC"),
            "stamp": stamp,
            "command": " ".join(["python bench/run.py", *(sys.argv[1:] if argv is None else argv)]),
            "mode": "quick" if args.quick else "full",
            "client_procs": args.client_procs,
            "repeats": cfg.repeats,
            "config": vars(cfg),
            "machine": report.machine_info(),
        },
        "rows": rows,
    }
    interrupted = None
    state: dict[str, Any] = {"pool": None}

    def new_pool() -> ClientPool:
        if state["pool"] is not None:
            state["pool"].close()
        state["pool"] = ClientPool(args.client_procs)
        return state["pool"]

    try:
        new_pool()
        for spec in servers:
            why = unavailable_reason(spec)
            if spec.name == "node-ws" and node_problem:
                why = node_problem
            with contextlib.ExitStack() as backend:
                if spec.private_backend and why is None:
                    url, pids = backend.enter_context(private_backend(spec.private_backend))
                    spec.env = {**spec.env, "MEGAPHONE_BACKEND": url}
                    spec.backend_pids = pids
                run_server(spec, why, scenarios, cfg, state, new_pool, rows, log, log_dir)
    except (KeyboardInterrupt, Deadline) as exc:
        interrupted = f"{type(exc).__name__}: {exc}"
        log(f"interrupted ({interrupted}); cleaning up")
    finally:
        signal.alarm(0)
        if state["pool"] is not None:
            state["pool"].close()

    doc["meta"]["interrupted"] = interrupted
    doc["meta"]["wall_s"] = round(time.monotonic() - log.t0, 1)
    with contextlib.suppress(Exception):
        doc["charts"] = report.charts(doc, out_dir, stamp)
    json_path = out_dir / f"{stamp}.json"
    md_path = out_dir / f"{stamp}.md"
    report.write_json(json_path, doc)
    md_path.write_text(report.markdown(doc))
    log("summary:")
    report.print_summary(doc)
    log(f"wrote {json_path}, {md_path}" + "".join(f", {c}" for c in doc.get("charts", [])))

    mega = [r for r in rows if r["server"].startswith("megaphone")]
    failed = [r for r in mega if r.get("status") not in ("ok", "unavailable", "skipped")]
    if failed:
        for r in failed:
            log(f"FAILED: {r['server']} {r['scenario']} N={r.get('n')}: {r.get('status_text')}")
    if interrupted:
        return 2
    if failed:
        return 1
    if args.strict and any(r.get("status") == "unavailable" for r in mega):
        log("FAILED: Megaphone unavailable (--strict)")
        return 1
    if any(r.get("status") == "unavailable" for r in mega):
        log("note: Megaphone was unavailable in this run; see the table")
    return 0


if __name__ == "__main__":
    sys.exit(main())
