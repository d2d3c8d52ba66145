"""A private ``redis-server`` per test: on a free port, no persistence, stoppable mid-test.
A :class:`SentinelSetup` adds a replica and three Sentinels watching them.

Tests never use a Redis they did not start: :class:`RedisServer` runs ``redis-server --save ""
--appendonly no`` on a free port of 127.0.0.1 (or of the address ``host``, e.g. a bridge that
network namespaces reach: tests/netns.py); :meth:`RedisServer.stop` kills it (SIGKILL by
default, as a crash) and :meth:`RedisServer.start` starts it again, empty, on the same port. The
``redis_server`` fixture (tests/conftest.py) yields a started one and kills it at the end.
"""

from __future__ import annotations

import contextlib
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from tests.conftest import free_port, timeout, wait_for_port

if TYPE_CHECKING:
    import redis

REDIS_SERVER = shutil.which("redis-server")


class RedisServer:
    """One ``redis-server`` listening on ``host``; ``args`` are more of its options
    (``--replicaof``, say)."""

    def __init__(
        self, directory: Path, args: tuple[str, ...] = (), host: str = "127.0.0.1"
    ) -> None:
        self.directory = directory
        self.host = host  # the address it listens on
        self.port = free_port()
        self.args = args
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def url(self) -> str:
        return f"redis://{self.host}:{self.port}/0"

    def start(self) -> None:
        """Start the server (empty) on :attr:`port` and wait until it accepts connections."""
        assert REDIS_SERVER is not None and self.process is None
        self.starts += 1
        log = (self.directory / f"redis-{self.port}-{self.starts}.log").open("wb")
        with log:
            self.process = subprocess.Popen(
                [
                    REDIS_SERVER,
                    *("--port", str(self.port), "--bind", self.host),
                    # no password: on another address than loopback, let others in
                    *("--protected-mode", "yes" if self.host == "127.0.0.1" else "no"),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.directory)),
                    *("--maxclients", "10000"),
                    *self.args,
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.process, 10, self.host)

    def stop(self, sig: int = signal.SIGKILL) -> None:
        """Stop the server (SIGKILL: like a crash; everything in it is lost)."""
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.send_signal(sig)
            process.wait(timeout(10))

    def restart(self) -> None:
        self.stop()
        self.start()

    def client(self) -> redis.Redis:
        """A synchronous redis-py client of this server (close it)."""
        import redis

        return redis.Redis.from_url(self.url, socket_timeout=timeout(5))

    def info(self, section: str) -> dict[str, object]:
        with self.client() as client:
            return client.info(section)  # type: ignore[no-any-return]

    def command_calls(self, command: str) -> int:
        """How many times ``command`` ran since the server started (INFO commandstats)."""
        stats = self.info("commandstats").get(f"cmdstat_{command.lower()}")
        return int(stats["calls"]) if isinstance(stats, dict) else 0


class Sentinel:
    """One ``redis-server --sentinel`` on a free port, watching ``service`` on ``master_port``
    (quorum 2, a master is down after :data:`DOWN_AFTER_MS` without answers)."""

    def __init__(self, directory: Path, service: str, master_port: int) -> None:
        assert REDIS_SERVER is not None
        self.port = free_port()
        config = directory / f"sentinel-{self.port}.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\ndir {directory}\n"
            f"sentinel monitor {service} 127.0.0.1 {master_port} 2\n"
            f"sentinel down-after-milliseconds {service} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {service} 10000\n"
            f"sentinel parallel-syncs {service} 1\n"
        )
        with (directory / f"sentinel-{self.port}.log").open("wb") as log:
            self.process = subprocess.Popen(
                [REDIS_SERVER, str(config), "--sentinel"], stdout=log, stderr=subprocess.STDOUT
            )
        wait_for_port(self.port, self.process, 10)

    def client(self) -> redis.Redis:
        """A synchronous redis-py client of this Sentinel (close it)."""
        import redis

        return redis.Redis(port=self.port, socket_timeout=timeout(5))

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout(10))


#: Milliseconds without an answer after which the Sentinels of a :class:`SentinelSetup` count
#: the master as down (then they elect a leader and promote the replica, a second or two more).
DOWN_AFTER_MS = 1000


class SentinelSetup:
    """A master, one replica of it and three Sentinels, each on a free port (:meth:`stop` ends
    them all). :attr:`servers` is by port: whichever is master now, see :meth:`master`."""

    def __init__(self, directory: Path, service: str = "megaphone") -> None:
        self.service = service
        self.directory = directory
        first = RedisServer(directory)
        first.start()
        second = RedisServer(directory, ("--replicaof", "127.0.0.1", str(first.port)))
        second.start()
        self.servers = {first.port: first, second.port: second}
        self.sentinels: list[Sentinel] = []
        try:
            self.wait_for_replication(first, second)
            self.sentinels = [Sentinel(directory, service, first.port) for _ in range(3)]
            self.wait_until(lambda: self._sentinels_know(first.port, replicas=1, sentinels=2))
        except BaseException:
            self.stop()
            raise

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def master_port(self) -> int:
        """The master's port as the first Sentinel that answers names it."""
        for sentinel in self.sentinels:
            with contextlib.suppress(OSError, redis_errors()), sentinel.client() as client:
                return int(client.sentinel_get_master_addr_by_name(self.service)[1])
        raise AssertionError("no Sentinel answers")

    def master(self) -> RedisServer:
        return self.servers[self.master_port()]

    def replica(self) -> RedisServer:
        master = self.master_port()
        return next(s for port, s in self.servers.items() if port != master)

    def wait_until(self, condition: Callable[[], bool], seconds: float = 30) -> None:
        wait_until(condition, seconds, "Sentinel setup")

    def wait_for_replication(self, master: RedisServer, replica: RedisServer) -> None:
        def linked() -> bool:
            with contextlib.suppress(OSError, redis_errors()):
                return replica.info("replication").get("master_link_status") == "up"
            return False

        self.wait_until(linked)

    def _sentinels_know(self, master_port: int, replicas: int, sentinels: int) -> bool:
        for sentinel in self.sentinels:
            try:
                with sentinel.client() as client:
                    state = client.sentinel_master(self.service)
            except (OSError, redis_errors()):
                return False
            if int(state["port"]) != master_port:
                return False
            if int(state["num-slaves"]) < replicas or int(state["num-other-sentinels"]) < sentinels:
                return False
        return True

    def failed_over(self, old_master: int) -> Callable[[], bool]:
        """A condition: every Sentinel names another master than ``old_master``, it is one, and
        ``old_master``, if it runs, is a replica now."""

        def condition() -> bool:
            ports = set()
            for sentinel in self.sentinels:
                try:
                    with sentinel.client() as client:
                        ports.add(int(client.sentinel_get_master_addr_by_name(self.service)[1]))
                except (OSError, redis_errors()):
                    return False
            if len(ports) != 1 or old_master in ports:
                return False
            old = self.servers[old_master]
            try:
                if self.servers[ports.pop()].info("replication").get("role") != "master":
                    return False
                # A live old master is demoted too (until then, it still takes writes).
                return old.process is None or old.info("replication").get("role") == "slave"
            except (OSError, redis_errors()):
                return False

        return condition

    def stop(self) -> None:
        for sentinel in self.sentinels:
            sentinel.stop()
        for server in self.servers.values():
            server.stop()


def wait_until(condition: Callable[[], bool], seconds: float, what: str) -> None:
    """Poll ``condition`` until it holds; :class:`TimeoutError` after ``seconds`` (scaled)."""
    deadline = time.monotonic() + timeout(seconds)
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: condition not met in {seconds} s")
        time.sleep(0.05)


def redis_errors() -> type[Exception]:
    import redis

    return redis.RedisError


class ClusterSetup:
    """A Redis Cluster of ``masters`` masters with ``replicas`` replicas each, every node a
    :class:`RedisServer` on a free port (``--cluster-enabled``), created with ``redis-cli
    --cluster create``; :meth:`stop` kills them all."""

    def __init__(
        self, directory: Path, masters: int = 3, replicas: int = 1, host: str = "127.0.0.1"
    ) -> None:
        self.host = host  # the address every node listens on (and the others meet it at)
        self.nodes: list[RedisServer] = []
        try:
            for _ in range(masters * (1 + replicas)):
                node_dir = directory / f"node-{len(self.nodes)}"
                node_dir.mkdir()
                node = RedisServer(
                    node_dir,
                    (
                        *("--cluster-enabled", "yes", "--cluster-node-timeout", "1000"),
                        # a replica's first sync at once (7.0 waits 5 s for more replicas)
                        *("--repl-diskless-sync-delay", "0"),
                        *("--cluster-port", str(free_port())),  # not port + 10000: may be taken
                    ),
                    host,
                )
                node.start()
                self.nodes.append(node)
            subprocess.run(
                [
                    str(shutil.which("redis-cli")),
                    "--cluster",
                    "create",
                    *(f"{host}:{n.port}" for n in self.nodes),
                    *("--cluster-replicas", str(replicas), "--cluster-yes"),
                ],
                check=True,
                capture_output=True,
                timeout=timeout(60),
            )
            self.wait_until(self._ok)
        except BaseException:
            self.stop()
            raise

    def _ok(self) -> bool:
        """Every node says the cluster is ok, and every replica is in sync with its master (a
        replica that never synced would not be promoted: its data counts as too old)."""
        try:
            return all(self._state(n) == "ok" and self._synced(n) for n in self.nodes)
        except (OSError, redis_errors()):
            return False

    @staticmethod
    def _synced(node: RedisServer) -> bool:
        replication = node.info("replication")
        return replication.get("role") == "master" or (
            replication.get("master_link_status") == "up"
            and replication.get("master_sync_in_progress") == 0
        )

    @staticmethod
    def _state(node: RedisServer) -> object:
        with node.client() as client:
            info = client.execute_command("CLUSTER", "INFO")
            text = info.decode() if isinstance(info, bytes) else str(info)
            return "ok" if "cluster_state:ok" in text else "not ok"

    def wait_until(self, condition: Callable[[], bool], seconds: float = 30) -> None:
        wait_until(condition, seconds, "cluster")

    @property
    def url(self) -> str:
        """The ``redis+cluster://`` URL naming every node as a seed."""
        return "redis+cluster://" + ",".join(f"{self.host}:{n.port}" for n in self.nodes) + "/"

    def running(self) -> RedisServer:
        return next(n for n in self.nodes if n.process is not None)

    def slots(self) -> list[tuple[int, int, int, list[int]]]:
        """``CLUSTER SLOTS`` of a running node: (start, end, master port, replica ports)."""
        with self.running().client() as client:
            return [
                (int(start), int(end), int(master[1]), [int(r[1]) for r in replicas])
                for start, end, master, *replicas in client.execute_command("CLUSTER", "SLOTS")
            ]

    def slot_of(self, key: str) -> int:
        with self.running().client() as client:
            return int(client.execute_command("CLUSTER", "KEYSLOT", key))

    def owner(self, key: str) -> RedisServer:
        """The master serving ``key``'s hash slot."""
        return self.owner_of_slot(self.slot_of(key))

    def owner_of_slot(self, slot: int) -> RedisServer:
        for start, end, port, _ in self.slots():
            if start <= slot <= end:
                return next(n for n in self.nodes if n.port == port)
        raise AssertionError(f"no master serves slot {slot}")

    def masters(self) -> list[RedisServer]:
        ports = {port for _, _, port, _ in self.slots()}
        return [n for n in self.nodes if n.port in ports]

    def shard_subscribers(self, node: RedisServer, channels: list[str]) -> dict[str, int]:
        """``PUBSUB SHARDNUMSUB`` of ``channels`` on ``node``."""
        with node.client() as client:
            flat = client.execute_command("PUBSUB", "SHARDNUMSUB", *channels)
        return {c.decode(): int(n) for c, n in zip(flat[::2], flat[1::2], strict=True)}

    def replica_of(self, master: RedisServer) -> RedisServer:
        """A running replica of ``master`` (as the replica's INFO replication says)."""
        for node in self.nodes:
            if node.process is not None and node is not master:
                replication = node.info("replication")
                if replication.get("role") == "slave" and replication["master_port"] == master.port:
                    return node
        raise AssertionError(f"no replica of {master.port}")

    def node_id(self, node: RedisServer) -> str:
        with node.client() as client:
            reply = client.execute_command("CLUSTER", "MYID")
        return reply.decode() if isinstance(reply, bytes) else str(reply)

    def move_slot(self, slot: int, to: RedisServer) -> None:
        """Migrate ``slot`` live to the master ``to``, keys and all, the way ``redis-cli
        --cluster reshard`` does (IMPORTING/MIGRATING, MIGRATE, SETSLOT NODE everywhere)."""
        self.finish_move(slot, to, self.begin_move(slot, to))

    def begin_move(self, slot: int, to: RedisServer) -> RedisServer:
        """The first half of :meth:`move_slot`: the slot's keys on ``to``, the slot still the
        source's (MIGRATING there, IMPORTING on ``to``). Returns the source."""
        source = self.owner_of_slot(slot)
        with to.client() as target, source.client() as origin:
            target.execute_command("CLUSTER", "SETSLOT", slot, "IMPORTING", self.node_id(source))
            origin.execute_command("CLUSTER", "SETSLOT", slot, "MIGRATING", self.node_id(to))
            while keys := origin.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100):
                origin.execute_command("MIGRATE", to.host, to.port, "", 0, 5000, "KEYS", *keys)
        return source

    def finish_move(self, slot: int, to: RedisServer, source: RedisServer) -> None:
        """The second half of :meth:`move_slot`: ``to`` owns the slot, on every master."""
        target_id = self.node_id(to)
        for master in [to, source, *(m for m in self.masters() if m not in (source, to))]:
            with master.client() as client:
                client.execute_command("CLUSTER", "SETSLOT", slot, "NODE", target_id)

    def reshard(self, source: RedisServer, to: RedisServer, slots: int) -> None:
        """``redis-cli --cluster reshard``: move ``slots`` slots from ``source`` to ``to``."""
        subprocess.run(
            [
                str(shutil.which("redis-cli")),
                *("--cluster", "reshard", f"{source.host}:{source.port}"),
                *("--cluster-from", self.node_id(source), "--cluster-to", self.node_id(to)),
                *("--cluster-slots", str(slots), "--cluster-yes"),
            ],
            check=True,
            capture_output=True,
            timeout=timeout(60),
        )

    def failed_over(self, slot: int, old_master: int) -> Callable[[], bool]:
        """A condition: ``slot`` is served by another master than ``old_master`` and the cluster
        is ok on every running node."""

        def condition() -> bool:
            try:
                return self.owner_of_slot(slot).port != old_master and all(
                    self._state(n) == "ok" for n in self.nodes if n.process is not None
                )
            except (OSError, redis_errors()):
                return False

        return condition

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()

    def restart_all(self) -> None:
        """Kill every node and start each again, empty (its cluster config kept), then wait
        until the cluster is ok."""
        for node in self.nodes:
            node.stop()
        self.start_all()

    def start_all(self) -> None:
        for node in self.nodes:
            if node.process is None:
                node.start()
        self.wait_until(self._ok)
