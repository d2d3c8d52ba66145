"""The load client: worker processes that each hold many WebSocket connections (picows on uvloop).

The parent (run.py) drives the workers through a Pipe with small commands:

- ``connect``: open connections to ``url_base + topic + "/"`` with bounded concurrency, each
  from the source address its plan names (``local_addr``) or the kernel's choice;
- ``arm``: start a new measured run (run id, messages expected per topic), reset the counters;
- ``publish``: send messages on some topics, back to back (burst) or paced (rate);
- ``stats``: cheap progress counters; ``collect``: full results, latencies included;
- ``close``: drop every connection (``abort``: with a TCP reset, no close handshake);
- ``reconnect``: drop every connection with a reset, then ``connect`` again at once (a
  reconnect storm); ``quit``.

Every message is a small JSON text padded to ~100 bytes: run id, topic, sequence number, and the
send time (``time.monotonic_ns()``, which is one clock for every process on Linux). A subscriber
keeps, per connection, a bitmask of the sequence numbers it has seen, so it can tell duplicates,
reorders and gaps apart, and records the publish-to-receive latency of every delivery and, per
sequence number, when its first and its last copy arrived (a broadcast's spread over subscribers).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import ctypes
import json
import os
import resource
import signal
import socket
import struct
import time
import traceback
from typing import Any

MSG_SIZE = 100


def make_message(run: int, topic: str, seq: int, size: int = MSG_SIZE) -> bytes:
    head = f'{{"r":{run},"t":"{topic}","s":{seq},"ns":{time.monotonic_ns()},"p":"'
    pad = max(0, size - len(head) - 2)
    return (head + "x" * pad + '"}').encode()


def _die_with_parent() -> None:
    """Ask Linux to SIGTERM this process when its parent dies (no orphans after a crash)."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def raise_nofile(want: int = 65536) -> int:
    """Raise RLIMIT_NOFILE as far as allowed (root may also lift the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < want:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want
    if soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Worker:
    def __init__(self, index: int, commands: Any, replies: Any) -> None:
        self.index = index
        self.commands = commands  # read from the event loop (the loop may make it non-blocking)
        self.replies = replies  # written with blocking writes: a reply is never cut in two
        self.subs: list[Any] = []
        self.by_topic: dict[str, list[Any]] = {}
        self.run = -1
        self.expect: dict[str, int] = {}
        self.connect_errors: dict[str, int] = {}  # failed attempts of the latest connect
        self.reset_counters()

    def reset_counters(self) -> None:
        self.received = 0  # deliveries of the current run (first copy of each seq)
        self.expected = 0
        self.dups = 0
        self.reorders = 0
        self.stale = 0  # frames of an earlier run
        self.wrong_topic = 0
        self.bad = 0  # frames we could not parse
        self.first_recv = 0
        self.last_recv = 0
        self.lat = array.array("q")
        self.disconnects = 0
        self.close_codes: dict[str, int] = {}  # why connections ended: close code, or "none"
        self.seq_first: dict[int, int] = {}  # sequence number -> its first and last delivery here
        self.seq_last: dict[int, int] = {}

    # -- frame path (hot) -------------------------------------------------------------------
    def on_message(self, sub: Any, payload: bytes, now: int) -> None:
        # fast path for the layout make_message() writes; JSON for anything else
        try:
            p = payload.split(b",", 4)
            run = int(p[0][5:])
            topic = p[1][5:-1]
            seq = int(p[2][4:])
            sent = int(p[3][5:])
        except (ValueError, IndexError):
            try:
                msg = json.loads(payload)
                run, seq, sent = int(msg["r"]), int(msg["s"]), int(msg["ns"])
                topic = str(msg["t"]).encode()
            except Exception:
                self.bad += 1
                return
        if run != self.run:
            self.stale += 1
            return
        if topic != sub.topic_b:
            self.wrong_topic += 1
            return
        bit = 1 << seq
        if sub.mask & bit:
            self.dups += 1
            return
        if seq < sub.maxseq:
            self.reorders += 1
        else:
            sub.maxseq = seq
        sub.mask |= bit
        self.received += 1
        self.lat.append(now - sent)
        if not self.first_recv:
            self.first_recv = now
        self.last_recv = now
        if seq not in self.seq_first:
            self.seq_first[seq] = now
        self.seq_last[seq] = now

    # -- commands ---------------------------------------------------------------------------
    async def cmd_connect(
        self,
        url_base: str,
        plan: list[tuple[str, int]] | list[tuple[str, int, str]],
        concurrency: int,
        timeout: float,
        attempts: int = 3,
    ) -> dict[str, Any]:
        """Open ``count`` connections on ``topic`` per plan entry ``(topic, count)``, or
        ``(topic, count, source address)``; up to ``attempts`` tries each."""
        from picows import WSListener, WSMsgType, ws_connect

        worker = self

        class Sub(WSListener):
            __slots__ = ("close_code", "mask", "maxseq", "topic", "topic_b", "transport")

            def __init__(self, topic: str) -> None:
                self.topic = topic
                self.topic_b = topic.encode()
                self.mask = 0
                self.maxseq = -1
                self.transport: Any = None
                self.close_code: int | None = None

            def on_ws_connected(self, transport: Any) -> None:
                self.transport = transport

            def on_ws_frame(self, transport: Any, frame: Any) -> None:
                mt = frame.msg_type
                if mt is WSMsgType.TEXT or mt is WSMsgType.BINARY:
                    worker.on_message(self, frame.get_payload_as_bytes(), time.monotonic_ns())
                elif mt is WSMsgType.CLOSE:
                    self.close_code = int(frame.get_close_code())
                    transport.send_close(frame.get_close_code())
                    transport.disconnect()

            def on_ws_disconnected(self, transport: Any) -> None:
                worker.disconnects += 1
                code = "none" if self.close_code is None else str(self.close_code)
                worker.close_codes[code] = worker.close_codes.get(code, 0) + 1

        sem = asyncio.Semaphore(concurrency)
        errors: dict[str, int] = {}
        self.connect_errors = errors
        ok = 0
        t0 = time.monotonic()

        async def one(topic: str, local_addr: str | None) -> None:
            nonlocal ok
            extra = {"local_addr": (local_addr, 0)} if local_addr else {}
            async with sem:
                for attempt in range(attempts):
                    try:
                        _, sub = await asyncio.wait_for(
                            ws_connect(
                                lambda: Sub(topic),
                                url_base + topic + "/",
                                websocket_handshake_timeout=timeout,
                                enable_auto_pong=True,
                                **extra,
                            ),
                            timeout,
                        )
                    except Exception as exc:
                        key = type(exc).__name__ + ": " + str(exc)[:120]
                        errors[key] = errors.get(key, 0) + 1
                        await asyncio.sleep(0.05 * (attempt + 1))
                        continue
                    self.subs.append(sub)
                    self.by_topic.setdefault(topic, []).append(sub)
                    ok += 1
                    return

        tasks = []
        for entry in plan:
            topic, count = entry[0], entry[1]
            local_addr = entry[2] if len(entry) > 2 else None
            tasks += [one(topic, local_addr) for _ in range(count)]
        await asyncio.gather(*tasks)
        return {
            "ok": ok,
            "failed": len(tasks) - ok,
            "errors": errors,
            "seconds": time.monotonic() - t0,
        }

    async def cmd_arm(self, run: int, expect: dict[str, int]) -> dict[str, Any]:
        self.run = run
        self.reset_counters()
        self.expect = expect
        expected = 0
        for sub in self.subs:
            sub.mask = 0
            sub.maxseq = -1
            expected += expect.get(sub.topic, 0)
        self.expected = expected
        return {"expected": expected}

    async def cmd_publish(
        self, run: int, topics: list[str], count: int, rate: float, size: int
    ) -> dict[str, Any]:
        from picows import WSMsgType

        pubs = []
        for topic in topics:
            subs = self.by_topic.get(topic)
            if not subs:
                raise RuntimeError(f"worker {self.index} has no connection on {topic!r}")
            pubs.append((topic, subs[0].transport))
        first = time.monotonic_ns()
        if rate <= 0:
            for seq in range(count):
                for topic, tr in pubs:
                    tr.send(WSMsgType.TEXT, make_message(run, topic, seq, size))
                if seq % 64 == 63:
                    await asyncio.sleep(0)  # let the loop flush and read between chunks
        else:
            interval = 1.0 / rate
            start = time.monotonic()
            for seq in range(count):
                delay = start + seq * interval - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
                for topic, tr in pubs:
                    tr.send(WSMsgType.TEXT, make_message(run, topic, seq, size))
        return {"first_send": first, "last_send": time.monotonic_ns(), "sent": count * len(pubs)}

    def _stats(self) -> dict[str, Any]:
        return {
            "received": self.received,
            "expected": self.expected,
            "dups": self.dups,
            "reorders": self.reorders,
            "stale": self.stale,
            "wrong_topic": self.wrong_topic,
            "bad": self.bad,
            "first_recv": self.first_recv,
            "last_recv": self.last_recv,
            "disconnects": self.disconnects,
            "close_codes": self.close_codes,
            "connections": len(self.subs),
            "connect_errors": sum(self.connect_errors.values()),
        }

    async def cmd_stats(self) -> dict[str, Any]:
        return self._stats()

    async def cmd_collect(self) -> dict[str, Any]:
        out = self._stats()
        missing = 0
        conns_with_loss = 0
        for sub in self.subs:
            want = self.expect.get(sub.topic, 0)
            got = sub.mask.bit_count() if want else 0
            if got < want:
                missing += want - got
                conns_with_loss += 1
        out["missing"] = missing
        out["conns_with_loss"] = conns_with_loss
        out["lat"] = self.lat.tobytes()
        out["seq_first"] = self.seq_first
        out["seq_last"] = self.seq_last
        return out

    async def cmd_close(self, abort: bool = False) -> dict[str, Any]:
        n = len(self.subs)
        linger = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a reset
        for sub in self.subs:
            tr = sub.transport
            if tr is not None:
                with contextlib.suppress(Exception):
                    if abort:
                        sock = tr.underlying_transport.get_extra_info("socket")
                        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, linger)
                    tr.disconnect(graceful=False)
        self.subs = []
        self.by_topic = {}
        await asyncio.sleep(0.05)
        return {"closed": n}

    async def cmd_reconnect(
        self,
        url_base: str,
        plan: list[tuple[str, int, str]],
        concurrency: int,
        timeout: float,
        attempts: int,
    ) -> dict[str, Any]:
        """The reconnect storm: every connection reset at once, then ``plan`` connected again
        right away. Times are ``time.monotonic_ns()`` (one clock for every process)."""
        dropped_at = time.monotonic_ns()
        dropped = (await self.cmd_close(abort=True))["closed"]
        res = await self.cmd_connect(url_base, plan, concurrency, timeout, attempts)
        res.update(dropped=dropped, dropped_at=dropped_at, done_at=time.monotonic_ns())
        return res

    # -- plumbing -----------------------------------------------------------------------------
    async def serve(self) -> None:
        loop = asyncio.get_running_loop()
        done = loop.create_future()
        tasks: set[asyncio.Task[None]] = set()

        async def handle(rid: int, name: str, args: tuple[Any, ...]) -> None:
            try:
                result = await getattr(self, "cmd_" + name)(*args)
                self.replies.send((rid, True, result))
            except Exception:
                self.replies.send((rid, False, traceback.format_exc()))

        def readable() -> None:
            try:
                os.set_blocking(self.commands.fileno(), True)  # a command may arrive in pieces
                rid, name, args = self.commands.recv()
            except (EOFError, OSError):
                if not done.done():
                    done.set_result(None)
                return
            if name == "quit":
                if not done.done():
                    done.set_result(None)
                return
            task = loop.create_task(handle(rid, name, args))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_reader(self.commands.fileno(), readable)
        await done
        loop.remove_reader(self.commands.fileno())
        await self.cmd_close()


def worker_main(index: int, commands: Any, replies: Any) -> None:
    _die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C and tells us to quit
    raise_nofile()
    os.set_blocking(replies.fileno(), True)
    worker = Worker(index, commands, replies)
    try:
        import uvloop

        runner = asyncio.Runner(loop_factory=uvloop.new_event_loop)
    except ImportError:
        runner = asyncio.Runner()
    with runner:
        runner.run(worker.serve())
    os._exit(0)


class ClientPool:
    """Parent side: N worker processes and a request/response call over a Pipe."""

    def __init__(self, nprocs: int) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.procs = []
        self.conns = []  # (commands, replies) per worker
        self._rid = 0
        self._stash: list[dict[int, Any]] = []
        for i in range(nprocs):
            cmd_r, cmd_w = ctx.Pipe(duplex=False)
            rep_r, rep_w = ctx.Pipe(duplex=False)
            p = ctx.Process(target=worker_main, args=(i, cmd_r, rep_w), name=f"bench-client-{i}")
            p.daemon = True
            p.start()
            cmd_r.close()
            rep_w.close()
            self.procs.append(p)
            self.conns.append((cmd_w, rep_r))
            self._stash.append({})

    @property
    def size(self) -> int:
        return len(self.procs)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs if p.pid is not None]

    def send(self, i: int, name: str, *args: Any) -> int:
        self._rid += 1
        self.conns[i][0].send((self._rid, name, args))
        return self._rid

    def wait(self, i: int, rid: int, timeout: float) -> Any:
        stash = self._stash[i]
        deadline = time.monotonic() + timeout
        while rid not in stash:
            left = deadline - time.monotonic()
            if left <= 0 or not self.conns[i][1].poll(min(left, 1.0)):
                if not self.procs[i].is_alive():
                    raise RuntimeError(f"client worker {i} died")
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"client worker {i} did not answer in {timeout:.0f} s")
                continue
            got_rid, ok, result = self.conns[i][1].recv()
            stash[got_rid] = (ok, result)
        ok, result = stash.pop(rid)
        if not ok:
            raise RuntimeError(f"client worker {i} failed:\n{result}")
        return result

    def call(self, i: int, name: str, *args: Any, timeout: float = 60) -> Any:
        return self.wait(i, self.send(i, name, *args), timeout)

    def call_all(
        self,
        name: str,
        args_list: list[tuple[Any, ...]],
        timeout: float = 60,
        progress: Any = None,
        every: float = 5.0,
    ) -> list:
        """``name`` on every worker at once; with ``progress``, call it with every worker's
        ``stats`` each ``every`` seconds until all have answered."""
        rids = [self.send(i, name, *args) for i, args in enumerate(args_list)]
        if progress is not None:
            deadline = time.monotonic() + timeout
            tick = time.monotonic() + every
            while not all(rid in self._stash[i] for i, rid in enumerate(rids)):
                for i, (_, replies) in enumerate(self.conns):
                    while replies.poll(0):
                        got_rid, ok, result = replies.recv()
                        self._stash[i][got_rid] = (ok, result)
                    if not self.procs[i].is_alive() and rids[i] not in self._stash[i]:
                        raise RuntimeError(f"client worker {i} died")
                now = time.monotonic()
                if now >= deadline:
                    raise TimeoutError(f"{name}: client workers did not answer in {timeout:.0f} s")
                if now >= tick:
                    progress([self.call(i, "stats", timeout=30) for i in range(self.size)])
                    tick = now + every
                time.sleep(0.1)
        return [self.wait(i, rid, timeout) for i, rid in enumerate(rids)]

    def close(self) -> None:
        for i, (cmd, _) in enumerate(self.conns):
            with contextlib.suppress(Exception):
                cmd.send((0, "quit", ()))
            with contextlib.suppress(Exception):
                self.procs[i].join(3)
        for p in self.procs:
            if p.is_alive():
                with contextlib.suppress(Exception):
                    p.kill()
                    p.join(2)
