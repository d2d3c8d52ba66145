"""Loopback source addresses for many connections to one server port.

A client socket bound to ``(address, 0)`` takes an ephemeral port of that address, and one
address has only ``net.ipv4.ip_local_port_range`` of them (28,232 by default) toward one server
port. So N connections are spread over 127.0.0.2, 127.0.0.3, ... (all of 127.0.0.0/8 is local on
Linux; the harness keeps to 127.0.0.x), at most ``per_addr`` from each.
"""

from __future__ import annotations

import ipaddress
import math

from .scenarios import split

FIRST = ipaddress.IPv4Address("127.0.0.2")
LAST = ipaddress.IPv4Address("127.0.0.254")  # the harness talks to 127.0.0.x only


def source_plans(
    topic: str, n: int, procs: int, per_addr: int, round_: int = 0
) -> list[list[tuple[str, int, str]]]:
    """The connect plans of ``procs`` client processes holding ``n`` connections on ``topic``
    between them: ``(topic, count, source address)`` entries, the processes' shares as even as
    possible, at most ``per_addr`` connections from any address.

    Round ``r`` takes the ``r``-th block of addresses, so connections opened again right after
    the round before it never need a port that round may still hold (TIME_WAIT)."""
    if n < 0 or procs < 1 or per_addr < 1:
        raise ValueError(f"n={n}, procs={procs}, per_addr={per_addr}")
    block = max(1, math.ceil(n / per_addr))
    if int(FIRST) + (round_ + 1) * block - 1 > int(LAST):
        raise ValueError(f"not enough loopback addresses for round {round_} of {block}")
    shares = split(n, procs)
    plans: list[list[tuple[str, int, str]]] = [[] for _ in range(procs)]
    proc, room = 0, shares[0]
    for i, count in enumerate(split(n, block)):
        addr = str(FIRST + round_ * block + i)
        while count:
            while room == 0:
                proc += 1
                room = shares[proc]
            take = min(count, room)
            plans[proc].append((topic, take, addr))
            count -= take
            room -= take
    return plans
