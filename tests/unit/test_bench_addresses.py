"""bench/benchlib/addresses.py: how `make bench-100k` spreads connections over source addresses."""

import sys
from collections import Counter
from pathlib import Path

import pytest

# bench/ on sys.path only while benchlib is imported: left there, bench's scripts would shadow
# packages of the same names (bench/autobahn.py, the package daphne imports).
_BENCH = str(Path(__file__).resolve().parents[2] / "bench")
sys.path.insert(0, _BENCH)
try:
    from benchlib.addresses import source_plans
finally:
    sys.path.remove(_BENCH)


def totals(plans):
    per_addr: Counter[str] = Counter()
    for plan in plans:
        for _, count, addr in plan:
            per_addr[addr] += count
    return [sum(c for _, c, _ in plan) for plan in plans], per_addr


def test_100k_over_two_processes_takes_five_addresses_of_20k():
    per_proc, per_addr = totals(source_plans("t", 100_000, 2, 20_000))
    assert per_proc == [50_000, 50_000]
    assert per_addr == {f"127.0.0.{i}": 20_000 for i in range(2, 7)}


def test_uneven_counts_stay_under_the_cap_and_add_up():
    plans = source_plans("t", 10_001, 3, 3_000)
    per_proc, per_addr = totals(plans)
    assert sum(per_proc) == 10_001
    assert max(per_proc) - min(per_proc) <= 1
    assert max(per_addr.values()) <= 3_000
    assert len(per_addr) == 4
    assert all(topic == "t" and count > 0 for plan in plans for topic, count, _ in plan)


def test_the_next_round_takes_fresh_addresses():
    first = totals(source_plans("t", 100_000, 2, 20_000))[1]
    second = totals(source_plans("t", 100_000, 2, 20_000, round_=1))[1]
    assert not set(first) & set(second)
    assert set(second) == {f"127.0.0.{i}" for i in range(7, 12)}


def test_fewer_connections_than_processes():
    per_proc, per_addr = totals(source_plans("t", 1, 2, 20_000))
    assert per_proc == [1, 0]
    assert per_addr == {"127.0.0.2": 1}


def test_addresses_stay_in_127_0_0_x():
    assert source_plans("t", 253, 1, 1)[0][-1] == ("t", 1, "127.0.0.254")
    with pytest.raises(ValueError):
        source_plans("t", 254, 1, 1)
    with pytest.raises(ValueError):
        source_plans("t", 100_000, 2, 20_000, round_=50)
