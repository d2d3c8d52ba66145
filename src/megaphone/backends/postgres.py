"""The PostgreSQL backend: many processes on many machines share one PostgreSQL database.

``postgres://user:password@host:port/dbname`` (or ``postgresql://``), as libpq reads it, with an
optional ``schema`` query parameter (default ``megaphone``): the schema that holds Megaphone's
tables. ``postgres://`` alone (no host, no database) uses the Django database ``default``
(``postgres://?alias=other`` another one), which must be a PostgreSQL one: its connection
parameters, not its connections. Either way the backend creates its own tables (``CREATE ...
IF NOT EXISTS`` in its schema, under an advisory lock, on its first connection); there are no
Django migrations for them, and nothing outside the schema is touched.

What it guarantees, on top of :mod:`megaphone.backends.base`:

* **One statement per publish.** ``<schema>.publish()``, a PL/pgSQL function run in its own
  transaction, creates the topic's epoch if it has none (or if the topic's state expired),
  answers a known ``msg_id`` with the message it names, takes the next offset under the topic
  row's lock (so publishers in any number of processes get 1, 2, 3... in commit order), trims
  the history to its size, stores the message and sends **one** ``NOTIFY`` for it, whatever the
  number of processes and clients listening. A message whose NOTIFY would exceed PostgreSQL's
  8000-byte payload limit is stored in the ``spill`` table and its NOTIFY carries only the row's
  id; listeners read it from there (kept :data:`SPILL_TTL` seconds). The message's time is the
  database server's clock. NOTIFYs are delivered in commit order, hence in offset order.
* **One LISTEN per backend instance** (per worker process; its connection's
  ``application_name`` is ``megaphone listener``, the others' ``megaphone``) on one channel for
  the whole schema: every process receives the NOTIFY of every message and hands those of the
  topics it subscribed to ``on_message``, on the backend's loop, in order; the others are
  skipped unparsed past their header. (So the cost of a message grows with the number of processes,
  not of clients or topics.)
* **No deaf subscriptions, no silent loss.** When the listening connection breaks (database
  restarted, connection terminated, no answer to the health query for :data:`HEALTH_INTERVAL`
  seconds), it reconnects with jittered exponential backoff (at most
  :data:`RECONNECT_MAX_DELAY` seconds apart), LISTENs again, then reads each subscribed topic's
  history after the last offset it delivered and hands the missed messages to ``on_message``
  before any live one (duplicates are dropped). NOTIFYs sent while it was disconnected are
  therefore never silently lost: they are replayed from history, or, when the history no
  longer holds them, the offsets jump and the session reports the gap (``recovered: false``).
  If the epoch changed meanwhile, the new epoch's messages are handed over (the session tells
  its client); if the epoch is the same but the offset went back (the database was restored
  from an older backup), the topic is dropped so that it starts a new epoch.
* **Loud failures.** Commands run on at most :data:`MAX_CONNECTIONS` connections per instance
  (plus the listening one), each call bounded by :data:`COMMAND_TIMEOUT` seconds; no silent
  retry of a publish. Any connection error, timeout or database error is raised as
  :class:`BackendUnavailable`. Starting does not need the database (the listener keeps trying);
  a subscription waits at most :data:`COMMAND_TIMEOUT` seconds for the listening connection.
* **Durable history.** Offsets, epochs and history live in tables, so they survive a restart of
  the database and of every server process: clients recover across both.
* **Everything expires.** Tables (in the schema): ``topics`` (topic, epoch, offset, expiry:
  :func:`~.base.epoch_ttl` after its last publish or read, refreshed by :meth:`sweep` while a
  process subscribes), ``messages`` (history; expiry: the history TTL after publishing; trimmed
  to the history size on each publish), ``presence`` (expiry ``presence_ttl`` after the last
  add) and ``spill``. :meth:`PostgresBackend.sweep` deletes what expired, in bounded batches.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import random
import re
import secrets
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import sql

from megaphone.backends.base import (
    BackendUnavailable,
    BaseBackend,
    HistoryPage,
    MessageCallback,
    PresenceStore,
    epoch_ttl,
)
from megaphone.backends.recovery import advance, missed
from megaphone.core.decoding import InvalidText
from megaphone.core.logs import get_logger
from megaphone.core.message import Message

logger = get_logger(__name__)

#: Most connections one backend instance opens for commands (the listening one is extra).
MAX_CONNECTIONS = 10
#: Seconds a command may take (connect included) before it fails.
COMMAND_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2
#: Seconds without a notification after which the listening connection is checked.
HEALTH_INTERVAL = 5.0
#: Upper bound of the reconnect backoff, in seconds.
RECONNECT_MAX_DELAY = 2.0
#: Seconds a payload too large for a NOTIFY stays in the spill table for listeners to read.
SPILL_TTL = 300
#: Most rows one sweep deletes per table.
SWEEP_BATCH = 1000
#: Largest NOTIFY payload sent inline, in bytes (PostgreSQL refuses 8000 and more).
NOTIFY_LIMIT = 7900

_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")

# The schema, created once per backend instance. {s} is the quoted schema name; NOTIFY payloads
# are ``offset epoch time kind inline|spill topic-length\n`` + topic + base64 payload or spill id.
_DDL = """
CREATE SCHEMA IF NOT EXISTS {s};
CREATE TABLE IF NOT EXISTS {s}.topics (
    topic text PRIMARY KEY, epoch text NOT NULL, "offset" bigint NOT NULL,
    expires_at timestamptz NOT NULL);
CREATE INDEX IF NOT EXISTS topics_expiry ON {s}.topics (expires_at);
CREATE TABLE IF NOT EXISTS {s}.messages (
    topic text NOT NULL, "offset" bigint NOT NULL, time double precision NOT NULL,
    kind "char" NOT NULL, payload bytea NOT NULL, msg_id text,
    expires_at timestamptz NOT NULL, PRIMARY KEY (topic, "offset"));
CREATE UNIQUE INDEX IF NOT EXISTS messages_msg_id ON {s}.messages (topic, msg_id)
    WHERE msg_id IS NOT NULL;
CREATE INDEX IF NOT EXISTS messages_expiry ON {s}.messages (expires_at);
CREATE TABLE IF NOT EXISTS {s}.spill (
    id bigserial PRIMARY KEY, body bytea NOT NULL, expires_at timestamptz NOT NULL);
CREATE TABLE IF NOT EXISTS {s}.presence (
    topic text NOT NULL, client text NOT NULL, info text NOT NULL,
    expires_at timestamptz NOT NULL, PRIMARY KEY (topic, client));
CREATE INDEX IF NOT EXISTS presence_expiry ON {s}.presence (expires_at);

-- The topic's row, locked until the transaction ends: created with a new epoch if missing or
-- expired (its old history deleted), its expiry pushed to now + meta_ttl.
CREATE OR REPLACE FUNCTION {s}.touch(p_topic text, p_meta_ttl float8, p_epoch text,
        OUT epoch text, OUT "offset" bigint) LANGUAGE plpgsql AS $$
DECLARE v_now timestamptz := clock_timestamp();
BEGIN
  INSERT INTO {s}.topics AS x VALUES (p_topic, p_epoch, 0, v_now + p_meta_ttl * interval '1s')
  ON CONFLICT (topic) DO UPDATE SET
    epoch = CASE WHEN x.expires_at < v_now THEN excluded.epoch ELSE x.epoch END,
    "offset" = CASE WHEN x.expires_at < v_now THEN 0 ELSE x."offset" END,
    expires_at = greatest(x.expires_at, excluded.expires_at)
  RETURNING x.epoch, x."offset" INTO epoch, "offset";
  IF "offset" = 0 THEN
    DELETE FROM {s}.messages m WHERE m.topic = p_topic;
  END IF;
END $$;

CREATE OR REPLACE FUNCTION {s}.notify(p_channel text, p_topic text, p_offset bigint,
        p_epoch text, p_time float8, p_kind "char", p_payload bytea) RETURNS void
        LANGUAGE plpgsql AS $$
DECLARE
  v_head text := p_offset || ' ' || p_epoch || ' ' || p_time::text || ' ' || p_kind::text;
  v_body text := encode(p_payload, 'base64');
  v_id bigint;
BEGIN
  IF octet_length(v_head) + octet_length(p_topic) + octet_length(v_body) < {limit} THEN
    PERFORM pg_notify(p_channel, v_head || ' i ' || length(p_topic) || E'\\n' || p_topic
                      || v_body);
  ELSE
    INSERT INTO {s}.spill (body, expires_at)
      VALUES (p_payload, clock_timestamp() + {spill_ttl} * interval '1s') RETURNING id INTO v_id;
    PERFORM pg_notify(p_channel, v_head || ' s ' || length(p_topic) || E'\\n' || p_topic || v_id);
  END IF;
END $$;

CREATE OR REPLACE FUNCTION {s}.publish(p_channel text, p_topic text, p_kind "char",
        p_payload bytea, p_msg_id text, p_size int, p_ttl float8, p_meta_ttl float8,
        p_epoch text, OUT o bigint, OUT e text, OUT t float8, OUT k "char", OUT p bytea)
        LANGUAGE plpgsql AS $$
DECLARE
  v_now timestamptz := clock_timestamp();
  v_keep boolean := p_size > 0 AND p_ttl > 0;
  v_seen record;
BEGIN
  SELECT x.epoch, x."offset" INTO e, o FROM {s}.touch(p_topic, p_meta_ttl, p_epoch) x;
  IF p_msg_id IS NOT NULL AND v_keep THEN
    SELECT m."offset", m.time, m.kind, m.payload INTO v_seen FROM {s}.messages m
      WHERE m.topic = p_topic AND m.msg_id = p_msg_id AND m.expires_at >= v_now
        AND m."offset" > o - p_size;
    IF FOUND THEN
      o := v_seen."offset"; t := v_seen.time; k := v_seen.kind; p := v_seen.payload;
      RETURN;
    END IF;
    DELETE FROM {s}.messages m WHERE m.topic = p_topic AND m.msg_id = p_msg_id;
  END IF;
  o := o + 1;
  t := extract(epoch FROM v_now);
  k := p_kind;
  p := p_payload;
  UPDATE {s}.topics x SET "offset" = o WHERE x.topic = p_topic;
  IF v_keep THEN
    DELETE FROM {s}.messages m WHERE m.topic = p_topic AND m."offset" <= o - p_size;
    INSERT INTO {s}.messages VALUES (p_topic, o, t, k, p, p_msg_id,
                                     v_now + p_ttl * interval '1s');
  ELSE
    DELETE FROM {s}.messages m WHERE m.topic = p_topic;
  END IF;
  PERFORM {s}.notify(p_channel, p_topic, o, e, t, k, p);
END $$;

-- One row per message after p_since (at most p_limit; none for 0), or one row of NULL message
-- columns; every row carries the topic's position and whether the history is complete.
CREATE OR REPLACE FUNCTION {s}.history(p_topic text, p_since bigint, p_limit int, p_size int,
        p_ttl float8, p_meta_ttl float8, p_epoch text)
        RETURNS TABLE (o bigint, e text, complete boolean, mo bigint, t float8, k "char",
                       p bytea) LANGUAGE plpgsql AS $$
DECLARE
  v_now timestamptz := clock_timestamp();
  v_oldest bigint;
  v_keep boolean := p_size > 0 AND p_ttl > 0;
BEGIN
  SELECT x.epoch, x."offset" INTO e, o FROM {s}.touch(p_topic, p_meta_ttl, p_epoch) x;
  complete := p_since >= o;
  IF NOT complete AND v_keep THEN
    SELECT min(m."offset") INTO v_oldest FROM {s}.messages m
      WHERE m.topic = p_topic AND m."offset" > greatest(p_since, o - p_size)
        AND m.expires_at >= v_now;
    complete := v_oldest = p_since + 1;
  END IF;
  IF v_keep AND p_since < o AND (p_limit IS NULL OR p_limit > 0) THEN
    RETURN QUERY SELECT o, e, complete, m."offset", m.time, m.kind, m.payload
      FROM {s}.messages m
      WHERE m.topic = p_topic AND m."offset" > greatest(p_since, o - p_size)
        AND m.expires_at >= v_now
      ORDER BY m."offset" LIMIT p_limit;
    IF FOUND THEN RETURN; END IF;
  END IF;
  RETURN QUERY SELECT o, e, complete, NULL::bigint, NULL::float8, NULL::"char", NULL::bytea;
END $$;
"""

_KINDS = {"text": "t", "binary": "b", "json": "j"}
#: The tables whose rows expire (column ``expires_at``), swept in one statement.
_EXPIRING = ("messages", "topics", "presence", "spill")


#: What PostgreSQL answers when the schema is gone (the database was dropped and created again).
_MISSING = (
    psycopg.errors.UndefinedFunction,
    psycopg.errors.UndefinedTable,
    psycopg.errors.InvalidSchemaName,
)


class _SchemaMissing(Exception):
    """A query failed on a missing schema object: create the schema and run it again."""


def _checked(what: str, text: str) -> str:
    """``text`` if PostgreSQL's text type can hold it (valid Unicode, no NUL character)."""
    try:
        text.encode()
    except UnicodeEncodeError as exc:
        raise InvalidText(f"cannot {what}: an argument is not valid Unicode") from exc
    if "\x00" in text:
        raise InvalidText(f"cannot {what}: a NUL character in a topic or msg_id")
    return text


def _message(
    topic: str, offset: int, epoch: str, time: float, kind: str, payload: bytes
) -> Message:
    data: str | bytes = payload if kind == "b" else payload.decode()
    return Message(topic, data, int(offset), epoch, float(time), json=kind == "j")


class _Notice:
    """A NOTIFY of the publish function, parsed as far as its topic."""

    __slots__ = ("body", "epoch", "kind", "offset", "spilled", "time", "topic")

    def __init__(self, payload: str) -> None:
        head, _, rest = payload.partition("\n")
        offset, self.epoch, time, self.kind, where, length = head.split(" ")
        self.offset, self.time = int(offset), float(time)
        self.spilled = where == "s"
        self.topic, self.body = rest[: int(length)], rest[int(length) :]


def _schema_from(url: str) -> tuple[str, str, str | None]:
    """``(libpq URL, schema, Django alias or None)`` of a backend URL."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = next((v for k, v in query if k == "schema"), "megaphone")
    alias = next((v for k, v in query if k == "alias"), None)
    if not _SCHEMA_NAME.match(schema):
        raise ValueError(f"invalid schema {schema!r} in {url!r}: lower-case letters, digits, _")
    rest = [(k, v) for k, v in query if k not in ("schema", "alias")]
    uses_django = not parts.netloc and parts.path in ("", "/")
    if alias is not None and not uses_django:
        raise ValueError(f"{url!r}: alias= names a Django database; give no host then")
    conninfo = urlunsplit(("postgresql", parts.netloc, parts.path, urlencode(rest), ""))
    return conninfo, schema, (alias or "default") if uses_django else None


def _django_params(alias: str) -> dict[str, Any]:
    """The connection parameters of Django's database ``alias`` (a PostgreSQL one)."""
    from django.db import connections

    if alias not in connections:
        raise ValueError(f"postgres:// uses the Django database {alias!r}, which is not defined")
    connection = connections[alias]
    if connection.vendor != "postgresql":
        raise ValueError(
            f"postgres:// uses the Django database {alias!r}, which is {connection.vendor}"
        )
    params = dict(connection.get_connection_params())
    for key in ("cursor_factory", "context", "server_side_binding", "prepare_threshold"):
        params.pop(key, None)
    return params


class PostgresBackend(BaseBackend):
    """Backend on one PostgreSQL database; see the module docstring for what it guarantees.
    Its own :class:`~.base.PresenceStore`; no cluster-wide topic count."""

    crosses_processes = True

    @property
    def presence_store(self) -> PresenceStore | None:
        return self

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._conninfo, self._schema, self._alias = _schema_from(url)
        self._s = sql.Identifier(self._schema)
        self._channel = f"megaphone_{self._schema}"
        # The Django database's connection parameters, read once, here: a database that is not
        # a PostgreSQL one fails the backend's construction (system check megaphone.E002).
        self._params = _django_params(self._alias) if self._alias is not None else None
        self._idle: list[psycopg.AsyncConnection[Any]] = []
        self._slots = asyncio.Semaphore(MAX_CONNECTIONS)
        self._schema_ready = False
        self._stopped = False
        self._schema_lock = asyncio.Lock()
        self._on_message: MessageCallback | None = None
        self._listener: asyncio.Task[None] | None = None
        self._listening: psycopg.AsyncConnection[Any] | None = None
        self._ready = asyncio.Event()
        # Subscribed topics -> (epoch, offset) of the last message handed to on_message (or the
        # topic's position when it was subscribed): where catching up after a reconnect starts,
        # and what a repeated NOTIFY is compared with.
        self._positions: dict[str, tuple[str, int]] = {}
        self._topics: set[str] = set()
        # Subscribed topic -> when its row's expiry is pushed back next (time.monotonic()).
        self._refresh_at: dict[str, float] = {}

    def _where(self) -> str:
        if self._alias is not None:
            return f"the Django database {self._alias!r}"
        parts = urlsplit(self._conninfo)
        return f"PostgreSQL at {parts.hostname or 'localhost'}:{parts.port or 5432}"

    def _error(self, what: str, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"{self._where()} failed to {what}: {exc or type(exc).__name__}")

    # Connections ----------------------------------------------------------------------------

    async def _connect(self, name: str = "megaphone") -> psycopg.AsyncConnection[Any]:
        """A new autocommit connection named ``name`` (``application_name``, as
        ``pg_stat_activity`` shows it); the schema is created on the instance's first one."""
        kwargs: dict[str, Any] = {
            **(self._params or {}),
            "autocommit": True,
            "connect_timeout": CONNECT_TIMEOUT,
            "client_encoding": "UTF8",
            "application_name": name,
            # A dead peer is noticed within ~10 s even without traffic.
            "keepalives": 1,
            "keepalives_idle": 5,
            "keepalives_interval": 2,
            "keepalives_count": 2,
        }
        connection = await psycopg.AsyncConnection.connect(
            "" if self._alias is not None else self._conninfo, **kwargs
        )
        if not self._schema_ready:
            try:
                await self._create_schema(connection)
            except BaseException:
                await connection.close()
                raise
        return connection

    async def _create_schema(self, connection: psycopg.AsyncConnection[Any]) -> None:
        async with self._schema_lock:
            if self._schema_ready:
                return
            ddl = _DDL.format(s=f'"{self._schema}"', limit=NOTIFY_LIMIT, spill_ttl=SPILL_TTL)
            async with connection.transaction():
                # Two processes creating the same function at once would conflict.
                await connection.execute(
                    "SELECT pg_advisory_xact_lock(hashtext(%s))", [f"megaphone:{self._schema}"]
                )
                await connection.execute(ddl.encode())
            self._schema_ready = True

    async def _run(self, what: str, query: sql.Composed | str, params: Any = ()) -> list[Any]:
        """Run ``query`` on a pooled connection; its rows. Failures: :class:`BackendUnavailable`
        (a connection that failed is closed, never reused). A query that failed because the
        schema is missing (the database was replaced) had no effect: the schema is created
        again and the query run once more."""
        try:
            return await self._run_once(what, query, params)
        except _SchemaMissing:
            self._schema_ready = False
            return await self._run_once(what, query, params)

    async def _run_once(self, what: str, query: sql.Composed | str, params: Any) -> list[Any]:
        async with self._slots:
            connection = self._idle.pop() if self._idle else None
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    if connection is None:
                        connection = await self._connect()
                    elif not self._schema_ready:
                        await self._create_schema(connection)
                    cursor = await connection.execute(query, params)
                    rows = await cursor.fetchall() if cursor.description else []
            except _MISSING as exc:
                assert connection is not None  # it answered
                await self._release(connection)
                if not self._schema_ready:
                    raise self._error(what, exc) from exc
                raise _SchemaMissing from exc
            except (psycopg.Error, OSError, TimeoutError) as exc:
                if connection is not None:
                    await self._discard(connection)
                raise self._error(what, exc) from exc
            except BaseException:  # cancelled mid-command: its state is unknown
                if connection is not None:
                    await self._discard(connection)
                raise
            await self._release(connection)
            return rows

    async def _release(self, connection: psycopg.AsyncConnection[Any]) -> None:
        """Back to the idle connections; closed instead once the backend stopped (a call that
        was in flight when it stopped leaves nothing open)."""
        if self._stopped:
            await self._discard(connection)
        else:
            self._idle.append(connection)

    @staticmethod
    async def _discard(connection: psycopg.AsyncConnection[Any]) -> None:
        with contextlib.suppress(Exception):
            await connection.close()

    def _fn(self, name: str, arguments: int) -> sql.Composed:
        placeholders = sql.SQL(", ").join([sql.Placeholder()] * arguments)
        return sql.SQL("SELECT * FROM {}.{}({})").format(
            self._s, sql.Identifier(name), placeholders
        )

    # Lifecycle ------------------------------------------------------------------------------

    async def start(self, on_message: MessageCallback) -> None:
        """Start the listener task, which connects and LISTENs (and does again for as long as
        the backend runs). The database being down does not fail this: each call fails."""
        self._on_message = on_message
        self._stopped = False
        self._listener = asyncio.get_running_loop().create_task(self._listen_forever())

    async def stop(self) -> None:
        self._on_message = None
        self._stopped = True
        listener, self._listener = self._listener, None
        if listener is not None:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
        idle, self._idle = self._idle, []
        for connection in idle:
            await self._discard(connection)

    # Commands -------------------------------------------------------------------------------

    def _arguments(self, topic: str) -> tuple[int, float, float, str]:
        size, ttl = self.history_limits(topic)
        return int(size), float(ttl), epoch_ttl(size, ttl), secrets.token_hex(4)

    async def publish(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Message:
        """Text ``payload``, topic or ``msg_id`` that is not valid Unicode (or, for the last
        two, holds a NUL) raises :class:`~megaphone.core.decoding.InvalidText`."""
        what = f"publish on {topic!r}"
        _checked(what, topic)
        if msg_id is not None:
            _checked(what, msg_id)
        if isinstance(payload, bytes):
            kind, body = "b", payload
        else:
            kind = "j" if json else "t"
            try:
                body = payload.encode()
            except UnicodeEncodeError as exc:
                raise InvalidText(f"cannot {what}: the text is not valid Unicode") from exc
        size, ttl, meta_ttl, epoch = self._arguments(topic)
        rows = await self._run(
            what,
            self._fn("publish", 9),
            [self._channel, topic, kind, body, msg_id, size, ttl, meta_ttl, epoch],
        )
        offset, epoch, at, stored_kind, stored = rows[0]
        return _message(topic, offset, epoch, at, stored_kind, bytes(stored))

    async def forward(self, message: Message) -> None:
        payload = message.payload
        body = payload if isinstance(payload, bytes) else payload.encode()
        what = f"forward on {message.topic!r}"
        await self._run(
            what,
            sql.SQL("SELECT {}.notify(%s, %s, %s, %s, %s, %s, %s)").format(self._s),
            [
                self._channel,
                _checked(what, message.topic),
                message.offset,
                message.epoch,
                message.time,
                _KINDS[message.kind],
                body,
            ],
        )

    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        what = f"read the history of {topic!r}"
        size, ttl, meta_ttl, epoch = self._arguments(topic)
        rows = await self._run(
            what,
            self._fn("history", 7),
            [_checked(what, topic), since, limit, size, ttl, meta_ttl, epoch],
        )
        offset, epoch, complete = rows[0][:3]
        messages = [
            _message(topic, row[3], epoch, row[4], row[5], bytes(row[6]))
            for row in rows
            if row[3] is not None
        ]
        return HistoryPage(messages, int(offset), epoch, bool(complete))

    async def ping(self) -> None:
        await self._run("answer SELECT 1", "SELECT 1")

    async def sweep(self) -> bool:
        """Delete, in one statement, at most :data:`SWEEP_BATCH` rows a table, the expired
        messages, topics, presence entries and spilled payloads; push back the expiry of the
        subscribed topics due (every third of their :func:`~.base.epoch_ttl`; never re-creating
        a row). True if a batch was full (more is due now)."""
        now = time.monotonic()
        due = [topic for topic, at in self._refresh_at.items() if at <= now][:SWEEP_BATCH]
        deletes = [
            sql.SQL(
                "{name} AS (DELETE FROM {s}.{t} WHERE ctid = ANY(ARRAY(SELECT ctid FROM {s}.{t} "
                "WHERE expires_at < clock_timestamp() LIMIT {n})) RETURNING 1)"
            ).format(
                name=sql.Identifier(f"d_{table}"),
                s=self._s,
                t=sql.Identifier(table),
                n=sql.Literal(SWEEP_BATCH),
            )
            for table in _EXPIRING
        ]
        counts = sql.SQL(", ").join(
            sql.SQL("(SELECT count(*) FROM {})").format(sql.Identifier(f"d_{table}"))
            for table in _EXPIRING
        )
        rows = await self._run(
            "sweep",
            sql.SQL("WITH {} SELECT greatest({})").format(sql.SQL(", ").join(deletes), counts),
        )
        full = int(rows[0][0]) >= SWEEP_BATCH
        if due:
            ttls = [epoch_ttl(*self.history_limits(topic)) for topic in due]
            await self._run(
                f"refresh {len(due)} topics",
                sql.SQL(
                    "UPDATE {}.topics x SET expires_at = greatest(x.expires_at, "
                    "clock_timestamp() + u.ttl * interval '1s') "
                    "FROM unnest(%s::text[], %s::float8[]) u(topic, ttl) WHERE x.topic = u.topic"
                ).format(self._s),
                [due, ttls],
            )
            for topic, ttl in zip(due, ttls, strict=True):
                self._refresh_at[topic] = now + ttl / 3
        return full

    # Presence -------------------------------------------------------------------------------

    async def presence_add(self, topic: str, client: str, info: dict[str, object]) -> None:
        """Entries expire ``presence_ttl`` seconds after they were last added."""
        what = f"add presence on {topic!r}"
        await self._run(
            what,
            sql.SQL(
                "INSERT INTO {}.presence AS x VALUES (%s, %s, %s, "
                "clock_timestamp() + %s * interval '1s') ON CONFLICT (topic, client) "
                "DO UPDATE SET info = excluded.info, expires_at = excluded.expires_at"
            ).format(self._s),
            [
                _checked(what, topic),
                _checked(what, client),
                json.dumps(info, separators=(",", ":")),
                self.presence_ttl,
            ],
        )

    async def presence_remove(self, topic: str, client: str) -> None:
        what = f"remove presence on {topic!r}"
        await self._run(
            what,
            sql.SQL("DELETE FROM {}.presence WHERE topic = %s AND client = %s").format(self._s),
            [_checked(what, topic), _checked(what, client)],
        )

    async def presence(self, topic: str) -> dict[str, dict[str, object]]:
        what = f"read presence on {topic!r}"
        rows = await self._run(
            what,
            sql.SQL(
                "SELECT client, info FROM {}.presence "
                "WHERE topic = %s AND expires_at >= clock_timestamp()"
            ).format(self._s),
            [_checked(what, topic)],
        )
        return {client: json.loads(info) for client, info in rows}

    # LISTEN/NOTIFY --------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        """Return once the listening connection is up and the topic's position is known, so
        every message published from then on reaches ``on_message``. While the listening
        connection is (re)connecting, wait for it up to :data:`COMMAND_TIMEOUT` seconds, then
        raise :class:`BackendUnavailable`."""
        if topic in self._topics:
            return
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), COMMAND_TIMEOUT)
            except TimeoutError:
                raise BackendUnavailable(
                    f"{self._where()}: no listening connection within {COMMAND_TIMEOUT} s; "
                    f"cannot subscribe to {topic!r}"
                ) from None
            if topic in self._topics:
                return
        self._topics.add(topic)
        try:
            page = await self.history(topic, 0, 0)
        except BaseException:
            self._topics.discard(topic)
            raise
        advance(self._positions, topic, page.epoch, page.offset)
        self._refresh_at[topic] = time.monotonic() + epoch_ttl(*self.history_limits(topic)) / 3

    async def unsubscribe(self, topic: str) -> None:
        self._topics.discard(topic)
        self._positions.pop(topic, None)
        self._refresh_at.pop(topic, None)

    async def _listen_forever(self) -> None:
        """Connect, LISTEN and catch up, dispatch; start again whenever the connection breaks."""
        attempt = 0
        while True:
            connection: psycopg.AsyncConnection[Any] | None = None
            try:
                async with asyncio.timeout(COMMAND_TIMEOUT):
                    connection = await self._connect("megaphone listener")
                    await connection.execute(
                        sql.SQL("LISTEN {}").format(sql.Identifier(self._channel))
                    )
                self._listening = connection
                for topic in list(self._topics):
                    await self._catch_up(topic)
                if attempt:
                    logger.info("PostgreSQL listener restored; %d topics", len(self._topics))
                attempt = 0
                self._ready.set()
                await self._listen(connection)
            except (TimeoutError, BackendUnavailable, psycopg.Error, OSError) as exc:
                if attempt == 0:
                    logger.warning("PostgreSQL listening connection down: %s", exc)
                else:
                    logger.debug("PostgreSQL listener reconnect failed: %s", exc)
            except Exception:  # a bug: logged, and the listener starts again (never a deaf one)
                logger.exception("PostgreSQL listener failed; reconnecting")
            finally:
                self._ready.clear()
                self._listening = None
                if connection is not None:
                    await self._discard(connection)
            delay = min(RECONNECT_MAX_DELAY, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            await asyncio.sleep(delay)

    async def _listen(self, connection: psycopg.AsyncConnection[Any]) -> None:
        """Dispatch notifications until the connection breaks or fails its health query."""
        while True:
            async for notify in connection.notifies(timeout=HEALTH_INTERVAL):
                await self._dispatch(notify.payload)
            async with asyncio.timeout(HEALTH_INTERVAL):
                await connection.execute("SELECT 1")

    async def _catch_up(self, topic: str) -> None:
        """Deliver ``topic``'s messages published since the last one delivered here."""
        position = self._positions.get(topic)
        if position is None:
            return
        page = await missed(topic, position, self.history, self._renew, store="PostgreSQL")
        for message in page.messages:
            self._deliver(message)
        if topic in self._topics:
            advance(self._positions, topic, page.epoch, page.offset)

    async def _renew(self, topic: str, epoch: str, offset: int) -> None:
        await self._run(
            f"renew the epoch of {topic!r}",
            sql.SQL(
                'DELETE FROM {}.topics WHERE topic = %s AND epoch = %s AND "offset" < %s'
            ).format(self._s),
            [topic, epoch, offset],
        )

    async def _dispatch(self, payload: str) -> None:
        try:
            notice = _Notice(payload)
        except ValueError:
            logger.error("undecodable NOTIFY of %d bytes dropped", len(payload))
            return
        topic = notice.topic
        if topic not in self._topics:
            return
        position = self._positions.get(topic)
        if position is not None and position[0] == notice.epoch and notice.offset <= position[1]:
            return  # delivered already (while catching up), or before the subscription
        try:
            if notice.spilled:
                rows = await self._run(
                    f"read a large message of {topic!r}",
                    sql.SQL("SELECT body FROM {}.spill WHERE id = %s").format(self._s),
                    [int(notice.body)],
                )
                body = bytes(rows[0][0]) if rows else None
            else:
                body = base64.b64decode(notice.body)
        except (BackendUnavailable, ValueError) as exc:
            body = None
            logger.warning("message %d of %r not read: %s", notice.offset, topic, exc)
        if body is None:  # the gap it leaves is filled from history by sessions
            return
        try:
            message = _message(topic, notice.offset, notice.epoch, notice.time, notice.kind, body)
        except UnicodeDecodeError:
            logger.error("undecodable message %d of %r dropped", notice.offset, topic)
            return
        if topic in self._topics:
            self._deliver(message)

    def _deliver(self, message: Message) -> None:
        advance(self._positions, message.topic, message.epoch, message.offset)
        callback = self._on_message
        if callback is not None:
            callback(message)
