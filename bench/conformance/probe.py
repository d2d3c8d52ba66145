"""RFC 6455 conformance + per-send CPU probe for candidate ASGI servers.

Run from the repo root with the project venv:

    .venv/bin/python bench/conformance/probe.py            # all servers
    .venv/bin/python bench/conformance/probe.py --only uvicorn-wsproto
    .venv/bin/python bench/conformance/probe.py --list

For each server it: picks a free port on 127.0.0.1, starts the server as a
subprocess (own process group) serving bench/conformance/app.py, waits until
it answers HTTP, runs the checks with the `websockets` client or hand-made
raw frames, then kills the process group.  It prints a table and writes
bench/conformance/results.json.  Everything has a timeout; the probe never
talks to anything but 127.0.0.1.

Needs (beyond the project venv): hypercorn, granian, daphne, wsproto
(`pip install hypercorn granian daphne wsproto`).  Linux only (reads /proc).
A server whose package is missing is reported as "not installed".
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import base64
import contextlib
import importlib.metadata
import importlib.util
import json
import os
import platform
import random
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

HERE = Path(__file__).resolve().parent
VENV_BIN = Path(sys.executable).parent
HOST = "127.0.0.1"
MAX_SIZE = 65536
BURST_N = 20000
BURST_REPS = 3

# ----------------------------------------------------------------------------
# Server definitions
# ----------------------------------------------------------------------------

HYPERCORN_TOML = HERE / "hypercorn.toml"


def _uvicorn_defaults(port: int) -> list[str]:
    # Only loop/http pinned: shows what uvicorn does out of the box
    # (ws auto = websockets-sansio, 16 MiB limit, permessage-deflate on).
    return [
        sys.executable,
        "-m",
        "uvicorn",
        "app:app",
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--lifespan",
        "off",
        "--log-level",
        "warning",
        "--no-access-log",
    ]


def _uvicorn(ws: str):
    def cmd(port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "uvicorn",
            "app:app",
            "--host",
            HOST,
            "--port",
            str(port),
            "--loop",
            "uvloop",
            "--http",
            "httptools",
            "--ws",
            ws,
            "--ws-max-size",
            str(MAX_SIZE),
            "--ws-per-message-deflate",
            "false",
            "--lifespan",
            "off",
            "--log-level",
            "warning",
            "--no-access-log",
        ]

    return cmd


def _hypercorn(port: int) -> list[str]:
    # websocket_max_message_size is only settable through a config file.
    return [
        str(VENV_BIN / "hypercorn"),
        "-c",
        str(HYPERCORN_TOML),
        "-b",
        f"{HOST}:{port}",
        "-k",
        "uvloop",
        "--log-level",
        "warning",
        "app:app",
    ]


def _granian(port: int) -> list[str]:
    # granian has no WebSocket message-size option (checked: `granian --help`).
    return [
        str(VENV_BIN / "granian"),
        "--interface",
        "asgi",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--log-level",
        "warning",
        "--ws",
        "app:app",
    ]


def _daphne(port: int) -> list[str]:
    return [
        str(VENV_BIN / "daphne"),
        "-b",
        HOST,
        "-p",
        str(port),
        "--websocket-max-message-size",
        str(MAX_SIZE),
        "-v",
        "0",
        "app:app",
    ]


SERVERS = [
    # name, module that must be importable, command builder, how max size is set
    ("uvicorn-websockets", "uvicorn", _uvicorn("websockets"), f"--ws-max-size {MAX_SIZE}"),
    ("uvicorn-sansio", "uvicorn", _uvicorn("websockets-sansio"), f"--ws-max-size {MAX_SIZE}"),
    ("uvicorn-wsproto", "wsproto", _uvicorn("wsproto"), f"--ws-max-size {MAX_SIZE}"),
    ("uvicorn-defaults", "uvicorn", _uvicorn_defaults, "default (16 MiB)"),
    # The project's own subclass of the sansio protocol (what `manage.py serve` uses); the raw
    # app here never calls its write_frame extension, so this checks it changes nothing else.
    (
        "uvicorn-megaphone",
        "megaphone.server.uvicorn",
        _uvicorn("megaphone.server.uvicorn:WebSocketProtocol"),
        f"--ws-max-size {MAX_SIZE}",
    ),
    (
        "hypercorn",
        "hypercorn",
        _hypercorn,
        f"websocket_max_message_size = {MAX_SIZE} (hypercorn.toml)",
    ),
    ("granian", "granian", _granian, "none: granian has no WebSocket size option"),
    ("daphne", "daphne", _daphne, f"--websocket-max-message-size {MAX_SIZE}"),
]

# ----------------------------------------------------------------------------
# Process management: every server we start is tracked and killed at exit.
# ----------------------------------------------------------------------------

_STARTED: list[subprocess.Popen] = []


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def kill_server(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        # start_new_session=True -> the server's pgid is its own pid.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=5)
    # Whatever is left in the group (hypercorn/granian workers) gets SIGKILL.
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)
    if proc in _STARTED:
        _STARTED.remove(proc)


def _kill_all() -> None:
    for proc in list(_STARTED):
        kill_server(proc)


atexit.register(_kill_all)


def _on_signal(signum, frame):
    _kill_all()
    sys.exit(128 + signum)


signal.signal(signal.SIGTERM, _on_signal)
signal.signal(signal.SIGINT, _on_signal)


def wait_http(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            with socket.create_connection((HOST, port), timeout=1) as s:
                s.settimeout(2)
                s.sendall(
                    f"GET / HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode()
                )
                if s.recv(64).startswith(b"HTTP/1.1 200"):
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants, from /proc/*/stat (no psutil needed)."""
    parent_of: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
            # field 4 (ppid) comes after the ")" that ends the command name
            parent_of[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            pass
    out, frontier = [pid], [pid]
    while frontier:
        frontier = [c for c, p in parent_of.items() if p in frontier]
        out += frontier
    return out


def _proc_cpu_s(pid: int) -> float:
    """CPU seconds of every thread of pid: per-thread schedstat (ns
    resolution); falls back to /proc/PID/stat utime+stime (clock ticks)."""
    total_ns = 0
    try:
        tids = os.listdir(f"/proc/{pid}/task")
        for tid in tids:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total_ns += int(f.read().split()[0])
        return total_ns / 1e9
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


def tree_cpu(pid: int) -> float:
    """CPU seconds used so far by the server process and all its descendants
    (hypercorn and granian run their workers in child processes)."""
    return sum(_proc_cpu_s(p) for p in tree_pids(pid))


def tree_rss_mb(pid: int) -> float:
    total_kb = 0
    for p in tree_pids(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total_kb += int(line.split()[1])
        except (OSError, ValueError):
            pass
    return round(total_kb / 1024, 1)


# ----------------------------------------------------------------------------
# Raw WebSocket client helpers (for frames the websockets library won't send)
# ----------------------------------------------------------------------------


def _mask(payload: bytes, key: bytes) -> bytes:
    if not payload:
        return b""
    n = len(payload)
    rep = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(rep, "big")).to_bytes(n, "big")


def frame_header(opcode: int, length: int, key: bytes, fin: bool = True) -> bytes:
    b0 = (0x80 if fin else 0) | opcode
    if length < 126:
        return bytes([b0, 0x80 | length]) + key
    if length < 65536:
        return bytes([b0, 0x80 | 126]) + struct.pack("!H", length) + key
    return bytes([b0, 0x80 | 127]) + struct.pack("!Q", length) + key


def client_frame(opcode: int, payload: bytes, fin: bool = True) -> bytes:
    key = os.urandom(4)
    return frame_header(opcode, len(payload), key, fin) + _mask(payload, key)


async def raw_handshake(port: int, path: str = "/"):
    reader, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 5)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n"
        ).encode()
    )
    await writer.drain()
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
    status = int(head.split(b" ", 2)[1])
    return reader, writer, status, head


async def read_frame(reader: asyncio.StreamReader):
    b0, b1 = await reader.readexactly(2)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await reader.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await reader.readexactly(8))
    key = await reader.readexactly(4) if b1 & 0x80 else None
    payload = await reader.readexactly(n)
    if key:
        payload = _mask(payload, key)
    return bool(b0 & 0x80), b0 & 0x0F, payload


async def raw_outcome(reader: asyncio.StreamReader, timeout: float) -> dict:
    """Read server frames until close/EOF/timeout; describe what happened."""
    deadline = time.monotonic() + timeout
    data_frames = 0
    data_bytes = 0
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return {"kind": "timeout", "data_frames": data_frames, "data_bytes": data_bytes}
        try:
            _fin, op, payload = await asyncio.wait_for(read_frame(reader), left)
        except TimeoutError:
            return {"kind": "timeout", "data_frames": data_frames, "data_bytes": data_bytes}
        except (asyncio.IncompleteReadError, ConnectionError):
            return {"kind": "eof", "data_frames": data_frames, "data_bytes": data_bytes}
        if op == 0x8:
            code = struct.unpack("!H", payload[:2])[0] if len(payload) >= 2 else None
            return {
                "kind": "close",
                "code": code,
                "reason": payload[2:].decode("utf-8", "replace"),
                "data_frames": data_frames,
                "data_bytes": data_bytes,
            }
        if op in (0x0, 0x1, 0x2):
            data_frames += 1
            data_bytes += len(payload)


def describe(o: dict) -> str:
    if o["kind"] == "close":
        s = f"close {o['code']}" if o["code"] is not None else "close frame without status code"
        if o.get("reason"):
            s += f" ({o['reason'][:60]})"
    elif o["kind"] == "eof":
        s = "TCP closed without close frame"
    else:
        s = "no close"
    if o.get("data_frames"):
        s += f"; got {o['data_frames']} data frame(s), {o['data_bytes']} B"
    return s


# ----------------------------------------------------------------------------
# Checks.  Each returns {"ok": True|False|None, "detail": str, ...}.
# ok=None means informational.
# ----------------------------------------------------------------------------


def ws_connect(port: int, path: str = "/", **kw):
    opts = dict(
        compression=None,
        max_size=None,
        open_timeout=5,
        close_timeout=2,
        ping_interval=None,
        max_queue=None,
    )
    opts.update(kw)
    return connect(f"ws://{HOST}:{port}{path}", **opts)


async def echo_check(port: int, message, timeout: float = 3.0) -> dict:
    async with ws_connect(port) as ws:
        await ws.send(message)
        try:
            got = await asyncio.wait_for(ws.recv(), timeout)
        except TimeoutError:
            return {"ok": False, "detail": f"no reply within {timeout:g}s (message dropped)"}
        except ConnectionClosed as e:
            return {"ok": False, "detail": f"connection closed: {e}"}
    want_type = type(message) if not isinstance(message, list) else str
    want = message if not isinstance(message, list) else "".join(message)
    if type(got) is want_type and got == want:
        return {"ok": True, "detail": f"echoed {type(got).__name__} len {len(got)}"}
    return {"ok": False, "detail": f"got {type(got).__name__} len {len(got)}: {got[:40]!r}"}


async def check_empty_text(port):
    return await echo_check(port, "")


async def check_empty_binary(port):
    return await echo_check(port, b"")


async def check_binary_1000(port):
    rnd = random.Random(6455)
    payload = bytes(range(256)) + rnd.randbytes(1000 - 256)  # every byte value + random
    return await echo_check(port, payload)


async def check_fragmented(port):
    # websockets sends an iterable as one message in len(iterable) frames
    # (first frame opcode text, then continuation frames).
    r = await echo_check(port, ["frag-1|", "frag-2|", "frag-3"])
    if r["ok"]:
        r["detail"] = "3 frames -> 1 text message 'frag-1|frag-2|frag-3'"
    return r


async def check_invalid_utf8(port):
    reader, writer, status, _ = await raw_handshake(port)
    try:
        if status != 101:
            return {"ok": False, "detail": f"handshake status {status}"}
        # "κόσμε" followed by an encoded UTF-16 surrogate (invalid UTF-8),
        # as in Autobahn case 6.x; plus a lone 0xff.
        bad = b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80edited\xff"
        writer.write(client_frame(0x1, bad))
        await writer.drain()
        o = await raw_outcome(reader, 3.0)
        return {"ok": o["kind"] == "close" and o["code"] == 1007, "detail": describe(o)}
    finally:
        writer.close()


async def check_close_4321(port):
    async with ws_connect(port) as ws:
        await ws.send("close:4321")
        try:
            got = await asyncio.wait_for(ws.recv(), 3)
            return {"ok": False, "detail": f"got a message instead of close: {got!r}"}
        except TimeoutError:
            return {"ok": False, "detail": "no close within 3s"}
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            return {
                "ok": code == 4321,
                "detail": f"client saw close {code}"
                + ("" if e.rcvd else " (no close frame received)"),
            }


async def check_max_at_limit(port):
    rnd = random.Random(1)
    return await echo_check(port, rnd.randbytes(MAX_SIZE), timeout=5)


async def _over_limit(port, message):
    async with ws_connect(port) as ws:
        try:
            await ws.send(message)
            got = await asyncio.wait_for(ws.recv(), 5)
            return {"ok": False, "detail": f"accepted: echoed {len(got)} B"}
        except TimeoutError:
            cr = ws.protocol.close_rcvd
            if cr is not None:
                return {
                    "ok": False,
                    "detail": f"close {cr.code} sent, but server never closed TCP "
                    "(closing handshake not finished; client still waiting after 5s)",
                }
            return {"ok": False, "detail": "no reply and no close within 5s"}
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
            reason = e.rcvd.reason if e.rcvd else ""
            d = f"close {code}" + (f" ({reason[:50]})" if reason else "")
            if not e.rcvd:
                d = "TCP closed without close frame"
            return {"ok": code == 1009, "detail": d}


async def check_max_over(port):
    return await _over_limit(port, random.Random(2).randbytes(MAX_SIZE + 1))


async def check_max_over_fragmented(port):
    # Two frames, each below the limit, adding up to limit+1.
    data = random.Random(3).randbytes(MAX_SIZE + 1)
    return await _over_limit(port, [data[: MAX_SIZE // 2], data[MAX_SIZE // 2 :]])


async def check_max_streaming(port):
    """Declare a 1 MiB binary frame and trickle it in, to see *when* the
    server gives up: at the frame header, once it has counted more than the
    limit, or only after buffering the whole frame (or never)."""
    declared = 1 << 20
    reader, writer, status, _ = await raw_handshake(port)
    try:
        if status != 101:
            return {"ok": False, "detail": f"handshake status {status}"}
        key = os.urandom(4)
        body = _mask(random.Random(4).randbytes(declared), key)
        stages = [
            ("after header + 4 KiB", 4096, 1.5),
            ("after 128 KiB (> limit)", 128 * 1024, 2.0),
            ("only after the whole 1 MiB frame", declared, 5.0),
        ]
        writer.write(frame_header(0x2, declared, key))
        sent = 0
        for label, upto, wait in stages:
            try:
                writer.write(body[sent:upto])
                await writer.drain()
            except (ConnectionError, OSError):
                pass
            sent = upto
            o = await raw_outcome(reader, wait)
            if o.get("data_frames"):
                return {
                    "ok": False,
                    "detail": f"accepted: echoed {o['data_bytes']} B",
                    "stage": "never",
                }
            if o["kind"] != "timeout":
                if o["kind"] == "close" and o.get("data_frames") == 0:
                    ok = o["code"] == 1009 and upto < declared
                    return {"ok": ok, "detail": f"{describe(o)} {label}", "stage": label}
                return {"ok": False, "detail": f"{describe(o)} {label}", "stage": label}
        return {"ok": False, "detail": "no close even after the whole frame", "stage": "never"}
    finally:
        writer.close()


async def check_reject_before_accept(port):
    _reader, writer, status, _head = await raw_handshake(port, "/reject")
    writer.close()
    return {"ok": None, "detail": f"HTTP {status}", "status": status}


async def check_deflate_default(port):
    """Does the server (with the flags used) accept permessage-deflate when
    the client offers it (websockets' default offer)?"""
    async with ws_connect(port, compression="deflate") as ws:
        ext = ws.response.headers.get("Sec-WebSocket-Extensions")
        await ws.send("hi")
        await asyncio.wait_for(ws.recv(), 3)
    return {
        "ok": None,
        "detail": f"negotiated: {ext}" if ext else "not negotiated",
        "negotiated": bool(ext),
    }


BURST_CFG = {"n": BURST_N, "reps": BURST_REPS}


async def check_burst_cpu(port, pid, n=None, reps=None, compression=None):
    n = n or BURST_CFG["n"]
    reps = reps or BURST_CFG["reps"]
    per_send = []
    rates = []
    async with ws_connect(port, compression=compression) as ws:
        negotiated = bool(ws.response.headers.get("Sec-WebSocket-Extensions"))
        # warm-up
        await ws.send("burst:1000")
        for _ in range(1000):
            await asyncio.wait_for(ws.recv(), 10)
        for _ in range(reps):
            c0 = tree_cpu(pid)
            t0 = time.perf_counter()
            await ws.send(f"burst:{n}")
            got = 0
            try:
                while got < n:
                    m = await asyncio.wait_for(ws.recv(), 10)
                    if len(m) != 100:
                        return {"ok": False, "detail": f"unexpected message len {len(m)}"}
                    got += 1
            except TimeoutError:
                return {"ok": False, "detail": f"only {got}/{n} messages arrived"}
            wall = time.perf_counter() - t0
            c1 = tree_cpu(pid)
            per_send.append((c1 - c0) / n * 1e6)
            rates.append(n / wall)
    med = statistics.median(per_send)
    return {
        "ok": None,
        "detail": f"{med:.1f} us/send (runs {', '.join(f'{x:.1f}' for x in per_send)}); "
        f"{statistics.median(rates):,.0f} msg/s",
        "us_per_send_median": round(med, 2),
        "us_per_send_runs": [round(x, 2) for x in per_send],
        "msgs_per_s_median": round(statistics.median(rates)),
        "deflate_negotiated": negotiated,
    }


CHECKS = [
    ("1 empty text", check_empty_text),
    ("2 empty binary", check_empty_binary),
    ("3 binary 1000 B", check_binary_1000),
    ("4 fragmented (3 frames)", check_fragmented),
    ("5 invalid UTF-8 -> 1007", check_invalid_utf8),
    ("6 app close 4321", check_close_4321),
    ("7a 65536 B accepted", check_max_at_limit),
    ("7b 65537 B -> 1009", check_max_over),
    ("7c 65537 B in 2 frames -> 1009", check_max_over_fragmented),
    ("7d 1 MiB frame: closed when?", check_max_streaming),
    ("i close before accept", check_reject_before_accept),
    ("i deflate when offered", check_deflate_default),
]


# The second burst offers permessage-deflate like every browser does, so a
# server that negotiates it pays for compression as it would in production.
BURSTS = [
    ("8 CPU/send, client no deflate", None),
    ("8' CPU/send, client offers deflate", "deflate"),
]


async def run_checks(port: int, pid: int) -> dict:
    results = {}
    for label, fn in CHECKS:
        try:
            results[label] = await asyncio.wait_for(fn(port), 30)
        except TimeoutError:
            results[label] = {"ok": False, "detail": "check timed out (30s)"}
        except Exception as e:
            results[label] = {"ok": False, "detail": f"error: {type(e).__name__}: {e}"[:200]}
    for label, compression in BURSTS:
        try:
            results[label] = await asyncio.wait_for(
                check_burst_cpu(port, pid, compression=compression), 120
            )
        except TimeoutError:
            results[label] = {"ok": False, "detail": "burst timed out (120s)"}
        except Exception as e:
            results[label] = {"ok": False, "detail": f"error: {type(e).__name__}: {e}"[:200]}
    return results


def probe_server(name, module, build_cmd, max_note, logdir: Path) -> dict:
    try:
        found = importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        return {"installed": False, "detail": f"python package '{module}' not importable"}
    port = free_port()
    cmd = build_cmd(port)
    log = logdir / f"{name}.log"
    with open(log, "wb") as logf:
        proc = subprocess.Popen(
            cmd,
            cwd=HERE,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    _STARTED.append(proc)
    out = {"installed": True, "cmd": " ".join(cmd), "max_size_setting": max_note, "port": port}
    try:
        if not wait_http(port, proc):
            out["started"] = False
            out["detail"] = "server did not answer HTTP within 20s"
        else:
            out["started"] = True
            out["pids"] = tree_pids(proc.pid)
            out["checks"] = asyncio.run(run_checks(port, proc.pid))
            out["rss_mb_after"] = tree_rss_mb(proc.pid)
    finally:
        kill_server(proc)
    text = log.read_text(errors="replace").splitlines()
    out["log_tail"] = [line[:200] for line in text[-12:]]
    return out


def versions() -> dict:
    v = {}
    for pkg in [
        "uvicorn",
        "websockets",
        "wsproto",
        "uvloop",
        "httptools",
        "hypercorn",
        "granian",
        "daphne",
        "autobahn",
        "twisted",
    ]:
        try:
            v[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            v[pkg] = None
    return v


def cell(r: dict) -> str:
    if r is None:
        return "-"
    mark = {True: "PASS", False: "FAIL", None: ""}[r["ok"]]
    return f"{mark} {r['detail']}".strip()


def print_table(results: dict) -> None:
    names = list(results)
    labels = [lab for lab, _ in CHECKS] + [lab for lab, _ in BURSTS]
    for name in names:
        r = results[name]
        print(f"\n== {name} ==")
        if not r.get("installed"):
            print(f"  NOT INSTALLED: {r.get('detail')}")
            continue
        if not r.get("started"):
            print(f"  DID NOT START: {r.get('detail')}")
            for line in r.get("log_tail", []):
                print("   |", line)
            continue
        for lab in labels:
            print(f"  {lab:34} {cell(r['checks'].get(lab))}")
    # compact matrix
    print("\nSummary (P=pass, F=fail, i=info):")
    short = {n: n[:18] for n in names}
    print(f"{'check':34}" + "".join(f"{short[n]:>20}" for n in names))
    for lab in labels:
        row = f"{lab:34}"
        for n in names:
            r = results[n]
            c = r.get("checks", {}).get(lab) if r.get("started") else None
            if c is None:
                s = "n/a"
            elif "us_per_send_median" in c:
                s = f"{c['us_per_send_median']:.1f}us" + (
                    "(deflate)" if c["deflate_negotiated"] else ""
                )
            elif c["ok"] is None:
                s = c["detail"][:18]
            else:
                s = "P" if c["ok"] else "F"
            row += f"{s:>20}"
        print(row)


def markdown(doc: dict) -> str:
    """Markdown table (checks as rows, servers as columns) from a results doc."""
    servers = {n: r for n, r in doc["servers"].items() if r.get("started")}
    labels = [lab for lab, _ in CHECKS] + [lab for lab, _ in BURSTS]
    lines = ["| check | " + " | ".join(servers) + " |", "|---" * (len(servers) + 1) + "|"]
    for lab in labels:
        row = []
        for r in servers.values():
            c = r["checks"].get(lab)
            if c is None:
                row.append("n/a")
            elif "us_per_send_median" in c:
                row.append(
                    f"{c['us_per_send_median']:.1f} µs"
                    + (" (deflate on)" if c["deflate_negotiated"] else "")
                )
            elif c["ok"] is True:
                row.append("pass")
            elif c["ok"] is False:
                row.append("**FAIL**: " + c["detail"].replace("|", "/"))
            else:
                row.append(c["detail"].replace("|", "/"))
        lines.append(f"| {lab} | " + " | ".join(row) + " |")
    lines.append(
        "| RSS after checks | "
        + " | ".join(f"{r['rss_mb_after']} MB" for r in servers.values())
        + " |"
    )
    for n, r in doc["servers"].items():
        if not r.get("installed"):
            lines.append(f"\n{n}: not installed ({r.get('detail')})")
        elif not r.get("started"):
            lines.append(f"\n{n}: did not start ({r.get('detail')})")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--only", action="append", help="server name (repeatable)")
    ap.add_argument("--list", action="store_true")
    ap.add_argument("--out", default=str(HERE / "results.json"))
    ap.add_argument(
        "--reps", type=int, default=BURST_REPS, help="burst repetitions (median reported)"
    )
    ap.add_argument(
        "--markdown",
        action="store_true",
        help="print a markdown table from an existing --out file and exit (runs nothing)",
    )
    args = ap.parse_args()
    if args.markdown:
        print(markdown(json.loads(Path(args.out).read_text())))
        return 0
    BURST_CFG["reps"] = args.reps
    if args.list:
        for s in SERVERS:
            print(s[0])
        return 0
    selected = [s for s in SERVERS if not args.only or s[0] in args.only]
    results = {}
    t0 = time.time()
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="megaphone-conformance-") as td:
        for name, module, build, max_note in selected:
            print(f"probing {name} ...", flush=True)
            results[name] = probe_server(name, module, build, max_note, Path(td))
    print_table(results)
    doc = {
        "generated": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "duration_s": round(time.time() - t0, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "versions": versions(),
        "max_size_configured": MAX_SIZE,
        "burst": {
            "messages": BURST_CFG["n"],
            "payload_bytes": 100,
            "reps": BURST_CFG["reps"],
            "metric": "server process-tree on-CPU time (/proc/*/task/*/schedstat) "
            "during the burst / messages; median of reps",
        },
        "load_avg_at_start": load_start,
        "load_avg_at_end": os.getloadavg(),
        "client": "websockets asyncio client, compression=None unless stated",
        "servers": results,
    }
    Path(args.out).write_text(json.dumps(doc, indent=2) + "\n")
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
