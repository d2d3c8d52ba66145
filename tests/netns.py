"""Several "machines" on this host: Linux network namespaces, each with an address of its own.

:meth:`Network.create` makes a bridge on the host with the first address of a private /24 picked
at random (one no interface or route here uses), and ``count`` namespaces, each joined to the
bridge by a veth pair and given the next addresses (``.2``, ``.3``...). The host reaches every
machine at its address, and every machine reaches the host at :attr:`Network.host_address` (where
a test runs the Redis they share). :meth:`Machine.command` prefixes a command line with
``ip netns exec`` so it runs on that machine; :meth:`Network.cut` sets a machine's end of the
cable down on the host side, as a pulled cable: nothing it sends or is sent arrives any more, and
no connection is reset (its peers find out only by their timeouts).

:meth:`Network.close` kills what still runs in the namespaces (by pid, each listed by
``ip netns pids``), deletes the namespaces (which deletes their veths) and the bridge. It needs
root, or CAP_NET_ADMIN and CAP_SYS_ADMIN: :func:`unavailable` says why it cannot run here.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import random
import re
import shutil
import signal
import subprocess
import uuid
from dataclasses import dataclass, field

IP = shutil.which("ip")


def ip(*args: str) -> str:
    """Run ``ip args...``; raise :class:`subprocess.CalledProcessError` with its stderr."""
    assert IP is not None
    return subprocess.run([IP, *args], check=True, capture_output=True, text=True).stdout


def unavailable() -> str | None:
    """Why namespaces cannot be made here (no ``ip``, no CAP_NET_ADMIN...), or None."""
    if IP is None:
        return "needs the ip command (iproute2)"
    probe = f"megaphone-probe-{uuid.uuid4().hex[:8]}"
    try:
        ip("netns", "add", probe)
    except subprocess.CalledProcessError as exc:
        return f"cannot create a network namespace (needs CAP_NET_ADMIN): {exc.stderr.strip()}"
    ip("netns", "del", probe)
    return None


@dataclass
class Machine:
    """A network namespace with one address: ``host_link`` is its veth's end on the host."""

    namespace: str
    address: str
    host_link: str

    def command(self, command: list[str]) -> list[str]:
        """``command`` run inside this machine's namespace."""
        assert IP is not None
        return [IP, "netns", "exec", self.namespace, *command]


@dataclass
class Network:
    """A bridge on the host and the machines plugged into it (see the module docstring)."""

    bridge: str
    host_address: str
    machines: list[Machine] = field(default_factory=list)

    @classmethod
    def create(cls, count: int) -> Network:
        """A bridge and ``count`` machines on a free private /24; on failure, what was made is
        removed and the error raised."""
        suffix = uuid.uuid4().hex[:6]
        prefix = free_subnet()
        network = cls(f"mgbr{suffix}", f"{prefix}.1")
        try:
            ip("link", "add", network.bridge, "type", "bridge")
            ip("addr", "add", f"{network.host_address}/24", "dev", network.bridge)
            ip("link", "set", network.bridge, "up")
            for number in range(count):
                network.machines.append(
                    network._plug(f"{suffix}{number}", f"{prefix}.{number + 2}")
                )
        except BaseException:
            network.close()
            raise
        return network

    def _plug(self, name: str, address: str) -> Machine:
        machine = Machine(f"megaphone-{name}", address, f"mgh{name}")
        inside = f"mgn{name}"
        ip("netns", "add", machine.namespace)
        ip("link", "add", machine.host_link, "type", "veth", "peer", "name", inside)
        ip("link", "set", inside, "netns", machine.namespace)
        ip("link", "set", machine.host_link, "master", self.bridge)
        ip("link", "set", machine.host_link, "up")
        inside_ip = ["-n", machine.namespace]
        ip(*inside_ip, "addr", "add", f"{address}/24", "dev", inside)
        ip(*inside_ip, "link", "set", inside, "up")
        ip(*inside_ip, "link", "set", "lo", "up")
        return machine

    def cut(self, machine: Machine) -> None:
        """Pull ``machine``'s cable: its link to the bridge goes down."""
        ip("link", "set", machine.host_link, "down")

    def close(self) -> None:
        """Kill what runs in the namespaces, delete them (and their veths) and the bridge."""
        for machine in self.machines:
            with contextlib.suppress(subprocess.CalledProcessError):
                for pid in ip("netns", "pids", machine.namespace).split():
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(int(pid), signal.SIGKILL)
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("netns", "del", machine.namespace)
            with contextlib.suppress(subprocess.CalledProcessError):
                ip("link", "del", machine.host_link)  # gone with the namespace, unless moved
        with contextlib.suppress(subprocess.CalledProcessError):
            ip("link", "del", self.bridge)


def free_subnet() -> str:
    """The first three bytes of a 10.x.y.0/24 that no address or route of this host overlaps."""
    listed = ip("-4", "-o", "addr") + ip("-4", "route", "show", "table", "all")
    taken = [
        ipaddress.ip_network(match, strict=False)
        for match in re.findall(r"\b\d+\.\d+\.\d+\.\d+(?:/\d+)?", listed)
    ]
    for _ in range(100):
        subnet = ipaddress.ip_network(
            f"10.{random.randrange(100, 255)}.{random.randrange(256)}.0/24"
        )
        if not any(subnet.overlaps(network) for network in taken):
            return str(subnet.network_address).rsplit(".", 1)[0]
    raise RuntimeError("no free private /24 in 10.100.0.0/16-10.254.255.0/24")
