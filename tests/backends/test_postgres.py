"""What the PostgreSQL backend adds to the conformance suite: its URLs (a libpq URL with a schema
of its own, or the Django database) and payloads past NOTIFY's 8000-byte limit."""

from __future__ import annotations

import asyncio

import django.db  # type: ignore[import-untyped]
import pytest
from django.db.utils import ConnectionHandler  # type: ignore[import-untyped]

from megaphone.backends import InvalidBackend, backend_from_url, base
from megaphone.backends.postgres import NOTIFY_LIMIT, PostgresBackend
from megaphone.core.message import Message
from megaphone.testing import Collected
from tests.postgres_server import PostgresServer
from tests.redis_server import wait_until


def test_an_invalid_schema_is_refused_clearly() -> None:
    with pytest.raises(InvalidBackend, match="invalid schema"):
        backend_from_url("postgres://u@127.0.0.1/db?schema=Robert');DROP")


def test_the_django_database_must_be_a_postgresql_one() -> None:
    # The tests' own default database is SQLite.
    with pytest.raises(InvalidBackend, match="'default', which is sqlite"):
        backend_from_url("postgres://")
    with pytest.raises(InvalidBackend, match="'nope', which is not defined"):
        backend_from_url("postgres://?alias=nope")


async def test_the_django_database_and_a_schema_of_its_own(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    database = {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": postgres_server.url.rsplit("/", 1)[1],
        "USER": postgres_server.user,
        "HOST": "127.0.0.1",
        "PORT": str(postgres_server.port),
    }
    monkeypatch.setattr(django.db, "connections", ConnectionHandler({"default": database}))
    backend = PostgresBackend("postgres://?schema=from_django", history_size=10)
    await backend.start(lambda message: None)
    try:
        assert (await backend.publish("t", "hello")).offset == 1
        assert [m.payload for m in (await backend.history("t")).messages] == ["hello"]
    finally:
        await backend.stop()
    tables = postgres_server.psql(
        "megaphone", "SELECT tablename FROM pg_tables WHERE schemaname = 'from_django' ORDER BY 1"
    )
    assert tables.split() == ["messages", "presence", "spill", "topics"]


async def test_payloads_too_large_for_a_notify_go_through_the_spill_table(
    postgres_server: PostgresServer,
) -> None:
    one, two = PostgresBackend(postgres_server.url), PostgresBackend(postgres_server.url)
    received: Collected[Message] = Collected()
    await one.start(lambda message: None)
    await two.start(received.append)
    try:
        await two.subscribe("big")
        sent: list[str | bytes] = ["é" * NOTIFY_LIMIT, bytes(range(256)) * 40, "small \x00 nul"]
        for payload in sent:
            await one.publish("big", payload)
        await received.wait_for(3)
        assert [m.payload for m in received] == sent
        spilled = postgres_server.psql("megaphone", "SELECT count(*) FROM megaphone.spill")
        assert int(spilled) == 2
    finally:
        await one.stop()
        await two.stop()


async def test_sweep_deletes_every_row_that_expired(
    postgres_server: PostgresServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(base, "MIN_EPOCH_TTL", 0.2)
    backend = PostgresBackend(postgres_server.url, limits=lambda topic: (10, 0.2), presence_ttl=0.2)
    await backend.start(lambda message: None)
    try:
        for payload in ("a", "b" * 2 * NOTIFY_LIMIT):  # the second spills
            await backend.publish("gone", payload)
        await backend.presence_add("gone", "c1", {})
        tables = ("messages", "topics", "presence", "spill")
        query = " + ".join(f"(SELECT count(*) FROM megaphone.{t})" for t in tables)
        assert int(postgres_server.psql("megaphone", f"SELECT {query}")) == 5
        await asyncio.sleep(0.5)  # the TTLs themselves
        # A spilled payload is kept minutes, for listeners that are slow to read it.
        postgres_server.psql("megaphone", "UPDATE megaphone.spill SET expires_at = now()")
        while await backend.sweep():
            pass
        assert int(postgres_server.psql("megaphone", f"SELECT {query}")) == 0
    finally:
        await backend.stop()


async def test_offsets_gone_back_start_a_new_epoch_instead_of_being_reused(
    postgres_server: PostgresServer,
) -> None:
    """The database restored from an older backup: a listener that delivered offset 5 finds
    the topic at offset 2 of the same epoch when it reconnects, and renews the topic."""
    received: Collected[Message] = Collected()
    backend = PostgresBackend(postgres_server.url)
    await backend.start(received.append)
    try:
        await backend.subscribe("restored")
        first = [await backend.publish("restored", str(i)) for i in range(5)]
        await received.wait_for(5)
        postgres_server.psql(
            "megaphone",
            "UPDATE megaphone.topics SET \"offset\" = 2 WHERE topic = 'restored';"
            "DELETE FROM megaphone.messages WHERE topic = 'restored' AND \"offset\" > 2",
        )
        assert postgres_server.terminate("megaphone listener") == 1
        epoch = "SELECT epoch FROM megaphone.topics WHERE topic = 'restored'"
        old = first[0].epoch
        # The database is another process: polled, until the listener renewed the topic.
        await asyncio.to_thread(
            wait_until,
            lambda: postgres_server.psql("megaphone", epoch).strip() not in ("", old),
            10,
            "the topic renewed",
        )
        again = await backend.publish("restored", "after")
        assert again.epoch != first[0].epoch and again.offset == 1
        await received.changed.wait_until(lambda: received[-1].payload == "after")
        assert [m.offset for m in received] == [1, 2, 3, 4, 5, 1]
    finally:
        await backend.stop()
