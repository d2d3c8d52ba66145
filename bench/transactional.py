"""Cost and latency of the transactional outbox (``publish()`` inside ``transaction.atomic()``).

Run: ``.venv/bin/python bench/transactional.py [N]``. It starts a private ``redis-server``,
migrates a fresh SQLite database of the example project, subscribes to the topic through the
Redis backend, and times N publishes each way, median over the calls:

* ``autocommit``: ``publish()`` outside a transaction (today's path: one backend round trip);
* ``atomic``: ``with transaction.atomic(): publish()`` (INSERT in the transaction, commit, relay
  after the commit, DELETE of the row);
* the publish-to-receive latency of both, as the subscriber sees it;
* a baseline: a transaction that writes one row and publishes nothing (the commit's own cost).
"""

from __future__ import annotations

import asyncio
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "example")]


def main(n: int) -> None:
    from tests.redis_server import RedisServer

    with tempfile.TemporaryDirectory() as directory:
        redis = RedisServer(Path(directory))
        redis.start()
        try:
            os.environ.update(
                DJANGO_SETTINGS_MODULE="tests.e2e.redis_settings",
                DJANGO_SQLITE_PATH=str(Path(directory) / "db.sqlite3"),
                REDIS_URL=redis.url,
            )
            run(n)
        finally:
            redis.stop()


def run(n: int) -> None:
    import django

    django.setup()
    from django.core.management import call_command
    from django.db import transaction

    import megaphone
    from megaphone.engine.node import start_node

    call_command("migrate", verbosity=0)
    received: dict[str, float] = {}
    ready = threading.Event()

    class Sink:
        def deliver(self, message: megaphone.Message) -> None:
            received[str(message.payload)] = time.perf_counter()

    def listen() -> None:
        async def main() -> None:
            node = await start_node(dashboard=False)
            await node.subscribe("bench-tx", Sink())
            ready.set()
            await asyncio.sleep(3600)

        asyncio.run(main())

    threading.Thread(target=listen, daemon=True).start()
    ready.wait(10)

    def timed(label: str, in_transaction: bool) -> None:
        calls, sent = [], {}
        for i in range(n):
            key = f"{label}-{i}"
            start = time.perf_counter()
            if in_transaction:
                with transaction.atomic():
                    megaphone.publish("bench-tx", key)
            else:
                megaphone.publish("bench-tx", key)
            calls.append(time.perf_counter() - start)
            sent[key] = start
        deadline = time.monotonic() + 10
        while any(k not in received for k in sent) and time.monotonic() < deadline:
            time.sleep(0.01)
        latencies = [received[k] - sent[k] for k in sent if k in received]
        print(
            f"{label:>10}: call {statistics.median(calls) * 1e6:7.0f} µs median, "
            f"publish-to-receive {statistics.median(latencies) * 1e6:7.0f} µs median, "
            f"{len(latencies)}/{n} received"
        )

    from megaphone.models import DurableTopic

    calls = []
    for i in range(n):
        start = time.perf_counter()
        with transaction.atomic():  # a transaction writing one row, publishing nothing
            DurableTopic.objects.update_or_create(name="bench", defaults={"offset": i})
        calls.append(time.perf_counter() - start)
    print(f"{'write only':>10}: call {statistics.median(calls) * 1e6:7.0f} µs median (baseline)")

    timed("warm-up", False)
    timed("autocommit", False)
    timed("atomic", True)
    timed("autocommit", False)
    timed("atomic", True)


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
