"""Tests wait on events, not on time: no ``sleep(`` in tests/ but the exceptions below.

A sleep that waits "long enough" for something to happen is slow on an idle machine and fails on
a loaded one; wait for the thing itself (``megaphone.testing.Signal``, a connection's
``flush()``, a frame received, ``tests.conftest.loop_turns`` for "nothing more happens"). A
``sleep(0)`` is one turn of the event loop, not a wait for time, and is allowed.

Each exception names its file and line text, and says why it is not a synchronisation: it paces
load on purpose, stays idle on purpose (to prove that something does *not* happen), or polls
another process or the wall clock, which no event of this process can announce. A stale
exception (its line gone) fails too, so the list only shrinks.
"""

from __future__ import annotations

import re
from pathlib import Path

TESTS = Path(__file__).resolve().parent.parent
SLEEP = re.compile(r"\bsleep\((?!0\))")

PACES = "paces load on purpose (a rate, or traffic kept going while something else happens)"
IDLE = "stays idle on purpose: proves that something does not happen in that time"
CLOCK = "waits for a TTL on the real clock (the backend takes no clock to advance)"
POLLS = "polls another process or thread: no event of this process announces it"

#: (file under tests/, the line's text without its indentation) -> why it may sleep.
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("backends/test_postgres.py", "await asyncio.sleep(0.5)  # the TTLs themselves"): CLOCK,
    ("e2e/test_control.py", "await asyncio.sleep(0.01)"): PACES
    + " (messages flow on the topic all along the revocation)",
    ("e2e/test_hooks.py", "await asyncio.sleep(0.05)"): POLLS
    + " (the log file the workers' signal receivers write)",
    ("e2e/test_postgres_scaleout.py", "await asyncio.sleep(0.05)"): POLLS
    + " (publish until the restarted database answers)",
    ("e2e/test_postgres_scaleout.py", "await asyncio.sleep(0.003)"): PACES,
    ("e2e/test_postgres_scaleout.py", "await asyncio.sleep(0.1)"): POLLS
    + " (publish until the workers have reconnected to the database)",
    ("e2e/test_redis_sentinel.py", "await asyncio.sleep(0.1)"): POLLS
    + " (publish until Sentinel has promoted the replica)",
    ("unit/test_redis_pubsub_reader.py", "await asyncio.sleep(INTERVAL / 4)"): PACES
    + " (replies keep coming for longer than the health interval)",
    ("e2e/test_redis_cluster.py", "await asyncio.sleep(0.1)"): POLLS
    + " (publish until the Cluster has promoted the replica)",
    ("e2e/test_redis_sentinel.py", "await asyncio.sleep(0.05)"): PACES
    + " (the stream goes on while the failover refuses publishes)",
    ("e2e/test_transactional_publish.py", "await asyncio.sleep(0.2)"): POLLS
    + " (the outbox table, emptied by a worker)",
    ("e2e/test_two_machines.py", "await asyncio.sleep(max(0.0, next_at - loop.time()))"): PACES,
    ("redis_server.py", "time.sleep(0.05)"): POLLS
    + " (wait_until: a Redis, Sentinel or Cluster process reaching a state)",
    ("conftest.py", "time.sleep(0.05)"): POLLS + " (a port listening; a log line)",
    ("e2e/test_hardening.py", "await asyncio.sleep(0.05)"): POLLS + " (eventually(): metrics)",
    ("e2e/test_runserver.py", "await asyncio.sleep(0.2)"): POLLS
    + " (the autoreloader, touched again until it reloads)",
    ("e2e/test_redis_scaleout.py", "await asyncio.sleep(0.05)"): POLLS
    + " (a worker restarting: reconnect until it serves)",
    ("e2e/test_redis_scaleout.py", "await asyncio.sleep(0.1)"): POLLS
    + " (publish until Redis answers again)",
    ("e2e/test_uvicorn_floods.py", "await asyncio.sleep(0.01)"): POLLS
    + " (uvicorn.Server.started has no event; the flood's sender thread)",
    ("e2e/test_uvicorn_write_frame.py", "await asyncio.sleep(0.01)"): POLLS
    + " (uvicorn.Server.started has no event)",
    (
        "e2e/test_dashboard_rates.py",
        "await asyncio.sleep(max(0.0, start + i / RATE - time.monotonic()))",
    ): PACES,
    ("e2e/test_hardening.py", "await asyncio.sleep(0.001)"): PACES
    + " (publishes spread over a second, against the rate limit)",
    ("e2e/test_shutdown.py", "await asyncio.sleep(0.005)"): PACES
    + " (publishes going on while the server shuts down)",
    ("e2e/test_redis_scaleout.py", "await asyncio.sleep(0.005)"): PACES
    + " (publishes going on while a worker is killed)",
    (
        "e2e/test_redis_backend.py",
        "time.sleep(0.01)  # every turn of the loop holds it 10 ms, as a large fan-out does",
    ): PACES + " (a busy event loop, simulated)",
    (
        "e2e/test_hardening.py",
        "await asyncio.sleep(1.5)  # three ping periods: the client answering pings stays",
    ): IDLE,
    (
        "e2e/test_browser_recovery.py",
        "time.sleep(0.5)  # the page retries against the dead network meanwhile",
    ): IDLE + " (the page keeps failing to reconnect while the network is down)",
    ("unit/test_memory_backend.py", "await asyncio.sleep(0.1)"): CLOCK,
    (
        "backends/conformance.py",
        "await asyncio.sleep(attempt % 5 * 0.0005)  # stop at different steps of starting",
    ): PACES + " (stop() at different points of start(), on purpose)",
    (
        "backends/conformance.py",
        "await asyncio.sleep(timeout(0.3) + 0.2)  # the TTL itself",
    ): CLOCK,
    (
        "backends/conformance.py",
        "await asyncio.sleep(timeout(0.2) + 0.3)  # epoch_ttl itself",
    ): CLOCK,
    ("backends/conformance.py", "await asyncio.sleep(0.05)"): POLLS
    + " (a backend server coming back: retried until it answers)",
    (
        "backends/conformance.py",
        "await asyncio.sleep(0.1)  # refreshing: more often than the TTL",
    ): CLOCK + " (presence refreshed within its TTL)",
    (
        "backends/test_durable.py",
        "await asyncio.sleep(0.6)  # the store's TTL (0.5 s) itself",
    ): CLOCK,
    ("e2e/test_redis_backend.py", "await asyncio.sleep(0.01)"): POLLS
    + " (until(): Redis's client list)",
    ("e2e/test_redis_backend.py", "await asyncio.sleep(0.4)"): CLOCK + " (a Redis key's TTL)",
    ("e2e/test_redis_backend.py", "await asyncio.sleep(0.25)"): CLOCK
    + " (presence refreshed within its TTL)",
    ("e2e/test_redis_backend.py", "await asyncio.sleep(0.6)"): CLOCK + " (presence TTL)",
    ("e2e/test_redis_backend.py", "await asyncio.sleep(0.05)"): CLOCK
    + " (sweeps over three meta TTLs with nobody publishing)",
    (
        "e2e/test_redis_backend.py",
        "await asyncio.sleep(0.1)  # and nothing more arrives meanwhile",
    ): IDLE,
    (
        "e2e/test_redis_backend.py",
        "await asyncio.sleep(0.02)  # Redis is another process: poll it",
    ): POLLS + " (publish until a restarted Redis answers)",
    ("unit/test_bounded_state.py", "await asyncio.sleep(0.1)"): CLOCK,
    ("unit/test_bounded_state.py", "await asyncio.sleep(0.05)"): CLOCK
    + " (sweeps until the topic's TTL has passed)",
    ("unit/test_bounded_state.py", "await asyncio.sleep(0.02)"): CLOCK
    + " (the node's background sweeper, whose ticks signal nothing)",
}


def sleeps() -> dict[tuple[str, str], list[int]]:
    """Every ``sleep(`` (but ``sleep(0)``) in tests/: (file, line text) -> line numbers."""
    found: dict[tuple[str, str], list[int]] = {}
    for path in sorted(TESTS.rglob("*.py")):
        if path == Path(__file__).resolve():
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if SLEEP.search(line):
                key = (path.relative_to(TESTS).as_posix(), line.strip())
                found.setdefault(key, []).append(number)
    return found


def test_no_test_sleeps_to_wait_for_an_event() -> None:
    unexplained = {
        f"tests/{file}:{numbers[0]}: {text}"
        for (file, text), numbers in sleeps().items()
        if (file, text) not in EXCEPTIONS
    }
    assert not unexplained, (
        "wait for the event, not for time (see this module's docstring), or add the line to "
        "EXCEPTIONS with its reason:\n" + "\n".join(sorted(unexplained))
    )


def test_every_exception_is_still_needed() -> None:
    stale = sorted(set(EXCEPTIONS) - set(sleeps()))
    assert not stale, f"no longer in tests/: remove from EXCEPTIONS: {stale}"


def test_the_check_finds_a_sleep_and_allows_a_loop_turn() -> None:
    assert SLEEP.search("await asyncio.sleep(0.1)")
    assert SLEEP.search("time.sleep(timeout(1))")
    assert not SLEEP.search("await asyncio.sleep(0)")
