"""The servers under test: how to check they can run, start them on a free port, stop them."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import procstat

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
PEERS = BENCH / "peers"
PY = sys.executable
REDIS_HOST, REDIS_PORT = "127.0.0.1", 6379


@dataclass
class ServerSpec:
    name: str
    label: str
    workers: int = 1
    uses_redis: bool = False
    is_megaphone: bool = False
    notes: str = ""
    #: A private backend server the run starts for this spec ("cluster", "postgres"; see
    #: benchlib.backends), its URL given as ``MEGAPHONE_BACKEND``.
    private_backend: str = ""
    #: The processes of that backend server, whose CPU counts with the server's (set by
    #: benchlib.backends while it runs).
    backend_pids: Callable[[], list[int]] | None = None
    env: dict[str, str] = field(default_factory=dict)
    #: ``manage.py serve --transport`` of a Megaphone server: "asgi" or "native".
    transport: str = "asgi"
    #: Arguments added to the server's command line (e.g. ``--fanout-timing`` for Node's).
    extra_args: tuple[str, ...] = ()

    def argv(self, port: int) -> tuple[list[str], Path]:
        argv, cwd = self._argv(port)
        return [*argv, *self.extra_args], cwd

    def _argv(self, port: int) -> tuple[list[str], Path]:
        p = str(port)
        if self.name == "node-ws":
            return ["node", str(PEERS / "node_ws" / "server.js"), "--port", p], PEERS / "node_ws"
        if self.name == "websockets":
            return [PY, str(PEERS / "websockets_broadcast.py"), "--port", p], PEERS
        if self.name.startswith("channels"):
            argv = [PY, "-m", "uvicorn", "tutorial.asgi:application", "--host", "127.0.0.1"]
            argv += ["--port", p, "--log-level", "warning", "--no-access-log"]
            if self.workers > 1:
                argv += ["--workers", str(self.workers)]
            return argv, PEERS / "channels_tutorial"
        if self.is_megaphone:
            argv = [PY, "example/manage.py", "serve", "--host", "127.0.0.1", "--port", p]
            return [*argv, "--workers", str(self.workers), "--transport", self.transport], REPO
        raise ValueError(self.name)


def all_servers(redis_db: int) -> list[ServerSpec]:
    mp_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db}"
    ch_url = f"redis://{REDIS_HOST}:{REDIS_PORT}/{redis_db + 1}"
    return [
        ServerSpec("node-ws", "Node ws broadcast", notes="npm ws, plain loop over the topic's set"),
        ServerSpec("websockets", "websockets broadcast()", notes="websockets asyncio + uvloop"),
        ServerSpec("megaphone", "Megaphone, 1 worker", is_megaphone=True),
        ServerSpec(
            "megaphone-native",
            "Megaphone native, 1 worker",
            is_megaphone=True,
            transport="native",
            notes="serve --transport native: Megaphone's endpoints without ASGI",
        ),
        ServerSpec(
            "megaphone-redis",
            "Megaphone, 2 workers, Redis",
            workers=2,
            uses_redis=True,
            is_megaphone=True,
            env={"REDIS_URL": mp_url},
        ),
        ServerSpec(
            "megaphone-native-redis",
            "Megaphone native, 2 workers, Redis",
            workers=2,
            uses_redis=True,
            is_megaphone=True,
            transport="native",
            env={"REDIS_URL": mp_url},
        ),
        ServerSpec(
            "megaphone-cluster",
            "Megaphone, 2 workers, Redis Cluster",
            workers=2,
            is_megaphone=True,
            private_backend="cluster",
            notes="a private cluster: 3 masters with a replica each, sharded pub/sub",
        ),
        ServerSpec(
            "megaphone-postgres",
            "Megaphone, 2 workers, PostgreSQL",
            workers=2,
            is_megaphone=True,
            private_backend="postgres",
            notes="a private PostgreSQL server: LISTEN/NOTIFY",
        ),
        ServerSpec(
            "channels-memory",
            "Channels tutorial, in-memory layer",
            env={"BENCH_CHANNEL_LAYER": "memory"},
            notes="uvicorn, 1 worker",
        ),
        ServerSpec(
            "channels-redis",
            "Channels tutorial, 2 workers, RedisPubSub",
            workers=2,
            uses_redis=True,
            env={"BENCH_CHANNEL_LAYER": "redis_pubsub", "BENCH_REDIS_URL": ch_url},
            notes="uvicorn --workers 2, channels_redis RedisPubSubChannelLayer",
        ),
    ]


def pick_servers(specs: list[ServerSpec], wanted: str) -> list[ServerSpec]:
    """The specs named in ``wanted`` (comma-separated, as ``--servers`` takes them); an unknown
    name ends the run with exit code 2 and the names it knows."""
    names = [x.strip() for x in wanted.split(",") if x.strip()]
    known = [s.name for s in specs]
    bad = [name for name in names if name not in known]
    if bad:
        print(f"unknown server(s) {bad}; known: {known}", file=sys.stderr)
        raise SystemExit(2)
    return [s for s in specs if s.name in names]


def redis_ping(timeout: float = 2.0) -> bool:
    try:
        with socket.create_connection((REDIS_HOST, REDIS_PORT), timeout=timeout) as s:
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


_megaphone_checked: dict[str, str | None] = {}


def megaphone_unavailable_reason() -> str | None:
    """None when `example/manage.py serve` exists, else why not (checked once per run)."""
    if "r" in _megaphone_checked:
        return _megaphone_checked["r"]
    reason: str | None = None
    manage = REPO / "example" / "manage.py"
    if not manage.exists():
        reason = "example/manage.py does not exist yet"
    else:
        try:
            r = subprocess.run(
                [PY, str(manage), "help", "serve"],
                cwd=REPO,
                capture_output=True,
                text=True,
                timeout=60,
                stdin=subprocess.DEVNULL,
            )
            if r.returncode != 0:
                tail = (r.stderr or r.stdout).strip().splitlines()[-1:] or ["?"]
                reason = f"`manage.py serve` is not available: {tail[0][:200]}"
            else:
                # what `make run` does before serving; harmless when already migrated
                subprocess.run(
                    [PY, str(manage), "migrate", "--noinput", "-v", "0"],
                    cwd=REPO,
                    capture_output=True,
                    timeout=120,
                    stdin=subprocess.DEVNULL,
                )
        except subprocess.TimeoutExpired:
            reason = "`manage.py help serve` timed out"
    _megaphone_checked["r"] = reason
    return reason


def unavailable_reason(spec: ServerSpec) -> str | None:
    if spec.name == "node-ws":
        if shutil.which("node") is None:
            return "node is not installed"
        if not (PEERS / "node_ws" / "node_modules" / "ws").exists():
            return "npm package ws is not installed (npm ci failed or npm missing)"
    if spec.name.startswith("channels"):
        try:
            import channels  # noqa: F401
        except ImportError:
            return "channels is not installed"
        if spec.uses_redis:
            try:
                import channels_redis  # noqa: F401
            except ImportError:
                return "channels_redis is not installed"
    if spec.uses_redis and not redis_ping():
        return f"no Redis at {REDIS_HOST}:{REDIS_PORT}"
    if spec.private_backend:
        from .backends import unavailable_reason as backend_unavailable

        if why := backend_unavailable(spec.private_backend):
            return why
    if spec.is_megaphone:
        return megaphone_unavailable_reason()
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _child_setup() -> None:
    # new session: the server and its workers form one process group we can kill as a whole;
    # PR_SET_PDEATHSIG: the server gets SIGTERM if the harness dies without cleaning up
    os.setsid()
    with contextlib.suppress(Exception):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)


class ServerProcess:
    def __init__(self, spec: ServerSpec, log_dir: Path) -> None:
        self.spec = spec
        self.port = free_port()
        argv, cwd = spec.argv(self.port)
        env = dict(os.environ)
        env.pop("DJANGO_SETTINGS_MODULE", None)  # the spec's own, or the project's default
        env.update(spec.env)
        env["PYTHONUNBUFFERED"] = "1"
        if spec.name.startswith("channels"):
            env["DJANGO_SETTINGS_MODULE"] = "tutorial.settings"
            env["PYTHONPATH"] = str(cwd)
        log_dir.mkdir(parents=True, exist_ok=True)
        self.log_path = log_dir / f"{spec.name}-{self.port}.log"
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=_child_setup,
        )
        self.url_base = f"ws://127.0.0.1:{self.port}/ws/broadcast/"

    def wait_listening(self, timeout: float) -> str | None:
        """None once the port accepts TCP connections, else the reason it never did."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return f"exited with code {self.proc.returncode}: {self.log_tail()}"
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return None
            except OSError:
                time.sleep(0.1)
        return f"not listening after {timeout:.0f} s: {self.log_tail()}"

    def log_tail(self, lines: int = 3) -> str:
        """The last lines of the server's output, the last error-looking line first."""
        with contextlib.suppress(OSError):
            text = [t.strip() for t in self.log_path.read_text(errors="replace").splitlines()]
            text = [t for t in text if t]
            errors = [t for t in text if re.search(r"[Ee]rror|\.E\d\d\d\)", t)]
            last = errors[-1:]
            picked = last + [t for t in text[-lines:] if t not in last]
            return " / ".join(t[:200] for t in picked)
        return ""

    def pids(self) -> list[int]:
        if self.proc.poll() is not None:
            return []
        return procstat.descendants(self.proc.pid)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, grace: float = 5.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(grace)
        # the group may still hold workers even when the leader is gone
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(2)
        self._log.close()
