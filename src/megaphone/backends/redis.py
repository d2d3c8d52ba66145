"""The Redis backend: many processes on many machines share one Redis.

``redis://[:password@]host:port/db`` and ``rediss://`` (TLS) URLs, as redis-py reads them. One
Redis server (or a primary with replicas failing over behind one address);
:mod:`~.redis_sentinel` finds the primary through Sentinel; :mod:`~.redis_cluster` runs the same
scripts on a Redis Cluster (it routes this backend's pipeline by hash slot, and fans out with
sharded pub/sub).

What it guarantees, on top of :mod:`megaphone.backends.base`:

* **One atomic script per publish.** A Lua script creates the topic's epoch if it has none,
  answers a known ``msg_id`` with the message it names, takes the next offset, appends the
  message to the topic's stream (bounded by the history size, trimmed by age) and PUBLISHes it
  once on the topic's channel, whatever the number of processes and clients listening. The
  message's time is the Redis server's clock, so every machine numbers and dates alike.
  Publishes queued one after the other on one topic (a client's burst) go as one run of the
  script (at most :data:`PUBLISH_BATCH`), which applies each in order exactly as its own run
  would have, under its own ``pcall``: its own offset, ``msg_id`` check and PUBLISH, and its
  own failure. Nothing runs between them; they share one clock reading (one ``time``).
* **Publishes and history reads are pipelined, in call order.** Those called while no pipeline
  is in flight go to Redis as one pipeline, in the order they were called; those called
  meanwhile go as the next one when it returns. So publishes are applied in call order, even
  when the caller does not wait for one before the next (:attr:`pipelines_publishes`), and many
  clients publishing (or resubscribing) at once cost a few round trips, not a pooled connection
  each: they wait for Redis, never for a free connection behind thousands of others.
* **A failed call fails alone.** Each call is encoded before it joins a pipeline, so an argument
  Redis cannot take (text that is not valid Unicode) fails that call alone
  (:class:`~megaphone.core.decoding.InvalidText`); Redis failing one publish or script fails
  that call alone (in a run of publishes too); only a lost connection fails the whole pipeline,
  and a run Redis refuses as a whole (a script error) fails the publishes of that run. Nothing is
  stranded: an unexpected error fails its own pipeline's calls, is logged, and the next
  pipeline goes out.
* **One pub/sub connection per backend instance** (per worker process), subscribed to exactly
  the topics the node asked for; a reader task hands their messages to ``on_message`` on the
  backend's loop, in the order Redis sent them (offset order), each decoded once per process.
* **No deaf subscriptions.** When the pub/sub connection breaks, the reader reconnects with
  jittered exponential backoff (at most :data:`RECONNECT_MAX_DELAY` seconds apart),
  resubscribes every topic, then reads each topic's history after the last offset it delivered
  and hands the missed messages to ``on_message`` before any live one (duplicates are dropped).
  If the topic's epoch changed meanwhile (Redis restarted empty, keys evicted, a replica
  promoted: an epoch belongs to the primary's replication id), it hands over the
  new epoch's messages: a protocol session receiving them sees the epoch change and tells its
  client (``unsubscribed`` / ``recovered: false``). If the epoch is the same but its offset went
  back (Redis came back from an older snapshot, or failed over to a replica that had not
  received the last writes), offsets would be reused: the reader drops the topic's keys so that
  it starts a new epoch, and clients are told the same way. A connection that stops answering
  its PINGs for two :data:`HEALTH_INTERVAL` periods counts as broken.
* **Loud failures.** Every command runs on a bounded pool (:data:`MAX_CONNECTIONS` connections,
  socket timeouts of :data:`SOCKET_TIMEOUT` seconds, no silent retry of a publish); any
  connection error, timeout or Redis error is raised as :class:`BackendUnavailable`. Starting
  does not need Redis (the reader keeps trying to connect); a subscription waits at most
  :data:`SOCKET_TIMEOUT` seconds for the pub/sub connection.

* **Every key expires.** Keys, all with a ``{topic}`` hash tag: ``megaphone:{topic}:meta``
  (hash: ``epoch``, ``offset``), ``megaphone:{topic}:history`` (stream; entry id ``<offset>-0``),
  ``megaphone:{topic}:ids`` (zset ``msg_id -> offset``), ``megaphone:{topic}:presence`` (zset
  ``client -> expiry ms``) and ``megaphone:{topic}:presence:info`` (hash ``client -> JSON``).
  The history and ids keys expire with the last message stored (its history TTL after it was
  published); the meta key :func:`~.base.epoch_ttl` after the topic's last publish or read, so
  it outlives no history, and an epoch lost this way is a new epoch (``recovered: false``),
  whose offsets start again at 1; presence keys ``presence_ttl`` after their last refresh.
  While a process has subscribers on a topic, :meth:`RedisBackend.sweep` refreshes the topic's
  meta key every third of its TTL (without creating it), so an idle topic keeps its epoch for
  as long as someone listens. Channel: ``megaphone:<db>:{topic}`` (pub/sub ignores databases,
  so the channel names the database).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import hashlib
import heapq
import json
import math
import random
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, TypeVar

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool, ConnectionPool
from redis.exceptions import RedisError, ResponseError

from megaphone.backends.base import (
    BackendUnavailable,
    BaseBackend,
    ClusterTopics,
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

#: Most connections one backend instance opens for commands (the pub/sub one is extra).
MAX_CONNECTIONS = 20
#: Seconds a command may take (connect, send, answer) before it fails.
SOCKET_TIMEOUT = 5.0
CONNECT_TIMEOUT = 2.0
#: Seconds between PINGs on an idle pub/sub connection.
HEALTH_INTERVAL = 5.0
#: Upper bound of the reconnect backoff, in seconds.
RECONNECT_MAX_DELAY = 2.0
#: Most subscribed topics one :meth:`RedisBackend.sweep` refreshes the meta key of.
REFRESH_BATCH = 1000
#: How every connection pool of the backend is built: bounded, callers wait for a free
#: connection at most :data:`SOCKET_TIMEOUT` seconds, RESP2.
POOL_OPTIONS: dict[str, Any] = {
    "max_connections": MAX_CONNECTIONS,
    "timeout": SOCKET_TIMEOUT,
    "socket_timeout": SOCKET_TIMEOUT,
    "socket_connect_timeout": CONNECT_TIMEOUT,
    "protocol": 2,
}

T = TypeVar("T")

# Shared by both scripts: the Redis server's clock (``now_ms``, and ``now``, the "sec.usec"
# string), its replication id, and ``topic_state``: make sure the topic has an epoch of its
# master's lineage (``LOST``, see :class:`Scripts`: the keys' replication id stamp shows that
# acknowledged writes may have been lost, so a new epoch), then trim its history to ``size``
# entries none older than ``ttl_ms``, and forget the msg_ids of trimmed messages; it returns
# the topic's epoch and offset. ``failure`` is the text of an error ``pcall`` caught.
_PRELUDE = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local now = clock[1] .. '.' .. string.format('%06d', tonumber(clock[2]))
local replication = redis.call('INFO', 'replication')
local replid = string.match(replication, 'master_replid:(%w+)')
local function topic_state(meta, history, ids, size, ttl_ms, meta_ttl_ms, new_epoch)
  local epoch = redis.call('HGET', meta, 'epoch')
  local stamped = redis.call('HGET', meta, 'replid')
  if not epoch or LOST then
    epoch = new_epoch
    redis.call('DEL', history, ids)
    redis.call('HSET', meta, 'epoch', epoch, 'offset', 0, 'replid', replid)
  elseif stamped ~= replid then
    redis.call('HSET', meta, 'replid', replid)
  end
  redis.call('PEXPIRE', meta, meta_ttl_ms)
  local offset = tonumber(redis.call('HGET', meta, 'offset'))
  if size <= 0 or ttl_ms <= 0 then
    redis.call('DEL', history, ids)
  else
    redis.call('XTRIM', history, 'MAXLEN', size)
    local deadline = (now_ms - ttl_ms) / 1000
    local first = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)
    while first[1] and tonumber(first[1][2][2]) < deadline do
      local batch = redis.call('XRANGE', history, '-', '+', 'COUNT', 100)
      local keep = nil
      for _, entry in ipairs(batch) do
        if tonumber(entry[2][2]) >= deadline then keep = entry[1]; break end
      end
      if not keep then
        keep = tostring(tonumber(string.match(batch[#batch][1], '^(%d+)')) + 1)
      end
      redis.call('XTRIM', history, 'MINID', keep)
      first = redis.call('XRANGE', history, '-', '+', 'COUNT', 1)
    end
    local oldest = offset + 1
    if first[1] then oldest = tonumber(string.match(first[1][1], '^(%d+)')) end
    redis.call('ZREMRANGEBYSCORE', ids, '-inf', '(' .. oldest)
  end
  return epoch, offset
end
local function failure(err)
  if type(err) == 'table' and err.err then return err.err end
  return tostring(err)
end
"""

# Publishes of one topic, in order, as if each were its own script run right after the one
# before (one clock reading for all). KEYS: meta, history, ids. ARGV: size, ttl_ms,
# meta_ttl_ms, new epoch, channel, then kind, msg_id ('' for none), payload of each publish.
# Returns one reply per publish: {offset, epoch, time} of the new message, {offset, epoch,
# time, kind, payload} of the one a known msg_id names (then nothing is published), or the
# error Redis failed that publish with (each runs under its own pcall: a failed one fails
# alone; the topic's state failing fails them all, as it would have failed each).
_PUBLISH = (
    _PRELUDE
    + """
local meta, history, ids = KEYS[1], KEYS[2], KEYS[3]
local size, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local channel = ARGV[5]
local replies = {}
local ok, epoch, offset = pcall(topic_state, meta, history, ids, size, ttl_ms,
  tonumber(ARGV[3]), ARGV[4])
if not ok then
  local refused = redis.error_reply(failure(epoch))
  for i = 6, #ARGV, 3 do replies[#replies + 1] = refused end
  return replies
end
local function publish(kind, msg_id, payload)
  if msg_id ~= '' then
    local seen = redis.call('ZSCORE', ids, msg_id)
    if seen then
      local entry = redis.call('XRANGE', history, seen, seen)
      if entry[1] then
        local f = entry[1][2]
        return {tonumber(seen), epoch, f[2], f[4], f[6]}
      end
    end
  end
  offset = redis.call('HINCRBY', meta, 'offset', 1)
  if size > 0 and ttl_ms > 0 then
    redis.call('XADD', history, 'MAXLEN', size, offset .. '-0', 't', now, 'k', kind, 'p', payload)
    redis.call('PEXPIRE', history, ttl_ms)
    if msg_id ~= '' then
      redis.call('ZADD', ids, offset, msg_id)
      redis.call('PEXPIRE', ids, ttl_ms)
    end
  end
  local head = offset .. ' ' .. epoch .. ' ' .. now .. ' ' .. kind .. '\\n'
  redis.call('FANOUT', channel, head .. payload)
  return {offset, epoch, now}
end
for i = 6, #ARGV, 3 do
  local done, reply = pcall(publish, ARGV[i], ARGV[i + 1], ARGV[i + 2])
  if not done then reply = redis.error_reply(failure(reply)) end
  replies[#replies + 1] = reply
end
return replies
"""
)

# KEYS: meta, history, ids. ARGV: size, ttl_ms, meta_ttl_ms, new epoch, since, limit (-1: none).
# Returns {offset, epoch, complete (0/1), entries...} with entries as XRANGE gives them.
_HISTORY = (
    _PRELUDE
    + """
local size, ttl_ms = tonumber(ARGV[1]), tonumber(ARGV[2])
local epoch, offset = topic_state(KEYS[1], KEYS[2], KEYS[3], size, ttl_ms, tonumber(ARGV[3]),
  ARGV[4])
local history = KEYS[2]
local since, limit = tonumber(ARGV[5]), tonumber(ARGV[6])
local entries = {}
if size > 0 and ttl_ms > 0 and since < offset then
  local count = limit
  if count == 0 then count = 1 end
  if count < 0 then
    entries = redis.call('XRANGE', history, tostring(since + 1), '+')
  else
    entries = redis.call('XRANGE', history, tostring(since + 1), '+', 'COUNT', count)
  end
end
local complete = 1
if since < offset then
  local oldest = offset + 1
  if entries[1] then oldest = tonumber(string.match(entries[1][1], '^(%d+)')) end
  if oldest ~= since + 1 then complete = 0 end
end
if limit == 0 then entries = {} end
return {offset, epoch, complete, entries}
"""
)

# KEYS: meta, history, ids. ARGV: epoch, offset. Drops the topic if its epoch is ``epoch`` but its
# offset is below ``offset`` (Redis lost acknowledged writes: an older snapshot, a failover to a
# lagging replica), so that its next use starts a new epoch instead of reusing offsets.
_FORGET_ROLLED_BACK = """
if redis.call('HGET', KEYS[1], 'epoch') == ARGV[1]
    and tonumber(redis.call('HGET', KEYS[1], 'offset')) < tonumber(ARGV[2]) then
  redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
end
"""

# KEYS: presence, presence info. ARGV: client, info JSON, ttl_ms.
_PRESENCE_ADD = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local ttl_ms = tonumber(ARGV[3])
redis.call('ZADD', KEYS[1], now_ms + ttl_ms, ARGV[1])
redis.call('HSET', KEYS[2], ARGV[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ttl_ms)
redis.call('PEXPIRE', KEYS[2], ttl_ms)
"""

# KEYS: presence, presence info. Drops expired entries; returns {client, info, client, info...}.
_PRESENCE = """
local clock = redis.call('TIME')
local now_ms = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
local expired = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now_ms)
if #expired > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now_ms)
  redis.call('HDEL', KEYS[2], unpack(expired))
end
local live = redis.call('ZRANGE', KEYS[1], 0, -1)
if #live == 0 then return {} end
local infos = redis.call('HMGET', KEYS[2], unpack(live))
local out = {}
for i, client in ipairs(live) do
  if infos[i] then
    out[#out + 1] = client
    out[#out + 1] = infos[i]
  end
end
return out
"""

# KEYS: presence, presence info. ARGV: client.
_PRESENCE_REMOVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
"""

_KINDS = {"text": b"t", "binary": b"b", "json": b"j"}


@functools.cache
def sha1(script: str) -> str:
    """The SHA1 digest Redis names ``script`` by (``EVALSHA``)."""
    return hashlib.sha1(script.encode()).hexdigest()


class Scripts:
    """The publish and history scripts of one kind of deployment. ``lost`` is the Lua condition
    under which a topic starts a new epoch, on ``stamped`` (the replication id its keys were
    stamped with), ``replid`` and ``replication`` (this master's id and ``INFO replication``);
    keys not lost but stamped by another id are stamped again with this one. ``fanout`` is the
    command that fans a message out (``PUBLISH``, ``SPUBLISH``)."""

    def __init__(self, lost: str, fanout: str) -> None:
        self.publish = _PUBLISH.replace("LOST", lost).replace("FANOUT", fanout)
        self.history = _HISTORY.replace("LOST", lost)
        self.fanout = fanout


#: One Redis server (or Sentinel's master): keys stamped by any other replication id than this
#: master's (a replica promoted, a server restarted) start a new epoch.
ONE_SERVER = Scripts("stamped ~= replid", "PUBLISH")


class _Call(NamedTuple):
    """A command as a pipeline sends it: what it does (for errors), the script it runs (None for
    a plain command), its topic (whose hash slot it touches), and the encoded command (EVALSHA
    for a script)."""

    what: str
    script: str | None
    topic: str
    command: tuple[bytes, ...]


class _Queued(NamedTuple):
    """A call waiting for its pipeline, and the future of its reply."""

    call: _Call
    future: asyncio.Future[Any]

    @property
    def what(self) -> str:
        return self.call.what


class _Publish(NamedTuple):
    """A publish waiting for its pipeline: its topic and channel, its kind, msg_id (empty for
    none) and payload, encoded, and the future of its reply. Consecutive publishes on one topic
    go to Redis as one call of the publish script (:meth:`RedisBackend._calls`)."""

    what: str
    topic: str
    channel: bytes
    message: tuple[bytes, ...]
    future: asyncio.Future[Any]


#: Most publishes one call of the publish script makes: a longer run of publishes on one topic
#: goes as several calls, so that one call holds Redis for a bounded time.
PUBLISH_BATCH = 100


def _settle(
    queued: list[_Queued | _Publish], error: Callable[[_Queued | _Publish], BackendUnavailable]
) -> None:
    """Fail the calls of ``queued`` that still wait, each with ``error(call)``."""
    for q in queued:
        if not q.future.done():
            q.future.set_exception(error(q))


async def _cancel(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait until it ended. redis-py can swallow a cancellation (its
    ``connect()`` did, in redis-py 8.1: the pub/sub reader then went on, connected, and stop()
    waited for ever), so the task is cancelled again until it ends."""
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=0.05)
    if not task.cancelled():
        task.exception()  # retrieved: it was logged where it happened, if it was an error


def _keys(topic: str) -> list[str]:
    return [
        f"megaphone:{{{topic}}}:meta",
        f"megaphone:{{{topic}}}:history",
        f"megaphone:{{{topic}}}:ids",
    ]


def _message(
    topic: str, offset: int, epoch: bytes, time: bytes, kind: bytes, payload: bytes
) -> Message:
    data: str | bytes = payload if kind == b"b" else payload.decode()
    return Message(topic, data, int(offset), epoch.decode(), float(time), json=kind == b"j")


def _decode_wire(topic: str, data: bytes) -> Message:
    """A message as the publish script PUBLISHes it: ``offset epoch time kind\\n`` + payload."""
    head, _, payload = data.partition(b"\n")
    offset, epoch, time, kind = head.split(b" ")
    return _message(topic, int(offset), epoch, time, kind, payload)


def _encode_wire(message: Message) -> bytes:
    payload = message.payload if isinstance(message.payload, bytes) else message.payload.encode()
    head = f"{message.offset} {message.epoch} {message.time:.6f} "
    return head.encode() + _KINDS[message.kind] + b"\n" + payload


def _invalid_text(what: str) -> InvalidText:
    return InvalidText(f"cannot {what}: an argument is not valid Unicode")


def script_loads(calls: list[_Call]) -> list[tuple[str, ...]]:
    """``SCRIPT LOAD`` of every script ``calls`` run, once each, to send before them."""
    scripts = dict.fromkeys(call.script for call in calls if call.script is not None)
    return [("SCRIPT", "LOAD", script) for script in scripts]


async def open_pubsub(pool: ConnectionPool) -> AbstractConnection:
    """A connected pub/sub connection of ``pool``'s class and options, for :func:`read_pubsub`
    and :func:`send_pubsub`. It connects with the pool's timeouts, then reads with none of
    redis-py's own: :func:`read_pubsub` keeps the time itself, with one timer per
    :data:`HEALTH_INTERVAL` instead of one per reply (a worker reads thousands of messages a
    second, and the timer was a tenth of its CPU), and :func:`send_pubsub` bounds each send."""
    kwargs = {**pool.connection_kwargs, "socket_timeout": SOCKET_TIMEOUT}
    connection: AbstractConnection = pool.connection_class(**kwargs)
    try:
        await connection.connect()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    except BaseException:
        await connection.disconnect()
        raise
    connection.socket_timeout = None
    return connection


async def send_pubsub(connection: AbstractConnection, *args: bytes | str) -> None:
    """Send one command on a pub/sub ``connection`` of :func:`open_pubsub`, in at most
    :data:`SOCKET_TIMEOUT` seconds (:class:`TimeoutError`)."""
    async with asyncio.timeout(SOCKET_TIMEOUT):
        await connection.send_packed_command(connection.pack_command(*args), check_health=False)


async def read_pubsub(connection: AbstractConnection, handle: Callable[[Any], bool]) -> None:
    """Hand every reply a pub/sub ``connection`` of :func:`open_pubsub` reads to ``handle``
    (an error reply as its :class:`ResponseError`), in order, until ``handle`` returns True.
    When no reply came for :data:`HEALTH_INTERVAL` seconds, a PING; no reply for two intervals
    raises :class:`BackendUnavailable`.

    One timer per interval, not one per reply: the deadline is the interval after the last
    reply as of when it was set; when it passes with replies read since, it is set again from
    the last one, so a busy connection costs a timer every few seconds."""
    loop = asyncio.get_running_loop()
    last = loop.time()  # when the last reply (or the connection) came
    pinged = False
    while True:
        deadline = asyncio.timeout_at(last + HEALTH_INTERVAL)
        try:
            async with deadline:
                while True:
                    try:
                        reply = await connection.read_response(disconnect_on_error=False)
                    except ResponseError as exc:
                        reply = exc
                    last = loop.time()
                    pinged = False
                    if handle(reply):
                        return
        except TimeoutError:
            if not deadline.expired():
                raise
        if loop.time() - last < HEALTH_INTERVAL:
            continue  # replies came meanwhile: wait the rest of the interval after the last
        if pinged:
            raise BackendUnavailable(f"no answer to PING within {HEALTH_INTERVAL} s")
        await send_pubsub(connection, "PING")
        pinged = True
        last = loop.time()


def ceil_ms(seconds: float) -> int:
    return math.ceil(seconds * 1000)


def pack(connection: AbstractConnection, commands: list[tuple[Any, ...]]) -> bytes:
    """``commands`` in the Redis protocol (RESP), arguments encoded by ``connection``'s encoder
    unless they are bytes already (every script call's are, encoded when it was queued):
    redis-py's own pack_commands() checks and encodes each argument again."""
    encode: Callable[[Any], bytes] = connection.encoder.encode
    out: list[bytes] = []
    for command in commands:
        out.append(b"*%d\r\n" % len(command))
        for arg in command:
            data = arg if arg.__class__ is bytes else encode(arg)
            out.append(b"$%d\r\n%b\r\n" % (len(data), data))
    return b"".join(out)


async def run_pipeline(pool: ConnectionPool, commands: list[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` at once on a connection of ``pool``; their replies, errors included
    (a lost connection raises, and the connection is dropped)."""
    connection = await pool.get_connection()  # type: ignore[no-untyped-call]  # unannotated in redis-py
    try:
        await connection.send_packed_command(pack(connection, commands))
        replies: list[Any] = []
        for _ in commands:
            try:
                replies.append(await connection.read_response())
            except ResponseError as exc:
                replies.append(exc)
        return replies
    except BaseException:
        await connection.disconnect()  # its answers are unread: never reuse it
        raise
    finally:
        await pool.release(connection)


class RedisBackend(BaseBackend):
    """Backend on one Redis server; see the module docstring for what it guarantees. Its own
    :class:`~.base.PresenceStore` and :class:`~.base.ClusterTopics`."""

    crosses_processes = True
    pipelines_publishes = True
    #: The publish and history scripts (their epoch rule and fan-out command).
    scripts = ONE_SERVER

    @property
    def presence_store(self) -> PresenceStore | None:
        return self

    @property
    def cluster_topics(self) -> ClusterTopics:
        return self

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self._pool = self._connection_pool(url)
        self._client = aioredis.Redis(connection_pool=self._pool)
        # str -> UTF-8 (strict), int and float -> their digits, bytes as they are.
        encoder = self._pool.get_encoder()  # type: ignore[no-untyped-call]  # unannotated in redis-py
        self._encode_arg: Callable[[Any], bytes] = encoder.encode
        # Pub/sub channels are shared by every database of a server: name the database in them.
        self._channel_prefix = f"megaphone:{self._pool.connection_kwargs.get('db', 0)}:"
        # Calls waiting for the next pipeline, and the task sending pipelines one at a time.
        self._queued: list[_Queued | _Publish] = []
        self._pipelines: asyncio.Task[None] | None = None
        self._on_message: MessageCallback | None = None
        self._reader: asyncio.Task[None] | None = None
        self._pubsub: AbstractConnection | None = None
        # channel -> topic, for every topic the node subscribed (wanted even while disconnected).
        self._topics: dict[bytes, str] = {}
        # topic -> (epoch, offset) of the last message handed to on_message, or the topic's
        # position when it was subscribed: where catching up after a reconnect starts.
        self._positions: dict[str, tuple[str, int]] = {}
        # topic -> (epoch, offset) up to which catching up already delivered (drop repeats).
        self._caught_up: dict[str, tuple[str, int]] = {}
        # channel -> SUBSCRIBE confirmations awaited on the current pub/sub connection.
        self._acks: dict[bytes, collections.deque[asyncio.Future[None]]] = {}
        # Set while the pub/sub connection is up, subscribed and caught up.
        self._ready = asyncio.Event()
        # Subscribed topic -> when its meta key is refreshed next (time.monotonic()), and the
        # heap of (time, topic) that sweep() pops; entries not matching _refresh_at are stale.
        self._refresh_at: dict[str, float] = {}
        self._refreshes: list[tuple[float, str]] = []

    def _connection_pool(self, url: str) -> BlockingConnectionPool:
        """The pool of command connections to the Redis ``url`` names; the pub/sub connection
        is one more of its :attr:`~BlockingConnectionPool.connection_class`, built with its
        ``connection_kwargs``. Subclasses discover the server another way (Sentinel)."""
        try:
            return BlockingConnectionPool.from_url(url, **POOL_OPTIONS)
        except ValueError as exc:
            raise ValueError(f"invalid Redis URL {url!r}: {exc}") from None

    def _where(self) -> str:
        """The Redis this backend talks to, for error messages."""
        kwargs = self._pool.connection_kwargs
        return f"Redis at {kwargs.get('host', '?')}:{kwargs.get('port', '?')}"

    def _channel(self, topic: str) -> bytes:
        return f"{self._channel_prefix}{{{topic}}}".encode()

    def _redis_error(self, what: str, exc: BaseException) -> BackendUnavailable:
        return BackendUnavailable(f"{self._where()} failed to {what}: {exc}")

    async def _call(self, what: str, command: Awaitable[T]) -> T:
        try:
            return await command
        except (TimeoutError, RedisError, OSError) as exc:
            raise self._redis_error(what, exc) from exc

    # Lifecycle ------------------------------------------------------------------------------

    async def start(self, on_message: MessageCallback) -> None:
        """Start the reader task, which opens the pub/sub connection (and reopens it for as long
        as the backend runs). Redis being down does not fail this: each call fails instead."""
        self._on_message = on_message
        self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def stop(self) -> None:
        self._on_message = None
        reader, self._reader = self._reader, None
        for task in (reader, self._pipelines):
            if task is not None:
                await _cancel(task)
        queued, self._queued = self._queued, []
        _settle(queued, lambda q: BackendUnavailable("the backend stopped"))
        await self._close_pubsub()
        await self._client.aclose()
        await self._pool.disconnect()

    # Commands -------------------------------------------------------------------------------

    def _script_args(self, topic: str) -> list[Any]:
        size, ttl = self.history_limits(topic)
        meta_ms = math.ceil(epoch_ttl(size, ttl) * 1000)
        return [int(size), math.ceil(ttl * 1000), meta_ms, secrets.token_hex(4)]

    async def sweep(self) -> bool:
        """Refresh the meta key of each subscribed topic whose refresh is due (every third of
        its :func:`~.base.epoch_ttl`), at most :data:`REFRESH_BATCH` per call, in one pipeline;
        ``PEXPIRE`` never creates a key, so a meta key already lost stays lost (new epoch)."""
        now = time.monotonic()
        if len(self._refreshes) > 2 * len(self._refresh_at) + REFRESH_BATCH:
            # Mostly entries of topics unsubscribed since: rebuild, so that churn leaves nothing.
            self._refreshes = [(at, topic) for topic, at in self._refresh_at.items()]
            heapq.heapify(self._refreshes)
        due: list[tuple[str, float]] = []
        while self._refreshes and len(due) < REFRESH_BATCH and self._refreshes[0][0] <= now:
            at, topic = heapq.heappop(self._refreshes)
            if self._refresh_at.get(topic) != at:
                continue  # unsubscribed, or rescheduled since
            ttl = epoch_ttl(*self.history_limits(topic))
            due.append((topic, ttl))
            self._refresh_at[topic] = now + ttl / 3
            heapq.heappush(self._refreshes, (now + ttl / 3, topic))
        if due:
            await asyncio.gather(
                *(
                    self._queue(
                        f"refresh {topic!r}", topic, ("PEXPIRE", _keys(topic)[0], ceil_ms(ttl))
                    )
                    for topic, ttl in due
                )
            )
        return bool(self._refreshes) and self._refreshes[0][0] <= now

    def _schedule_refresh(self, topic: str) -> None:
        at = time.monotonic() + epoch_ttl(*self.history_limits(topic)) / 3
        self._refresh_at[topic] = at
        heapq.heappush(self._refreshes, (at, topic))

    async def publish(
        self, topic: str, payload: str | bytes, *, json: bool = False, msg_id: str | None = None
    ) -> Message:
        """Text ``payload`` or a ``msg_id`` that is not valid Unicode raises
        :class:`~megaphone.core.decoding.InvalidText` for this call alone (see
        :meth:`_queue`). Publishes called one after the other on one topic go to Redis as one
        call of the publish script (:meth:`_calls`), each applied as if alone."""
        kind = b"b" if isinstance(payload, bytes) else (b"j" if json else b"t")
        what = f"publish on {topic!r}"
        try:  # as _encode() does, without its general encoder: this is every message's path
            data = payload if isinstance(payload, bytes) else payload.encode()
            encoded = (kind, msg_id.encode() if msg_id else b"", data)
        except UnicodeEncodeError as exc:
            raise _invalid_text(what) from exc
        future = self._enqueue(_Publish(what, topic, self._channel(topic), encoded, self._future()))
        reply = await future
        if len(reply) == 3:  # a new message: it is what was given
            offset, epoch, time = reply
            return Message(topic, payload, int(offset), epoch.decode(), float(time), json=json)
        return _message(topic, *reply)  # the message a known msg_id names

    def _topic_script(
        self, what: str, script: str, topic: str, keys: list[str], args: list[Any]
    ) -> asyncio.Future[Any]:
        """Queue ``script`` on ``keys`` (all ``topic``'s) for the next pipeline (see
        :meth:`_queue`)."""
        return self._queue(what, topic, ("EVALSHA", sha1(script), len(keys), *keys, *args), script)

    def _queue(
        self, what: str, topic: str, command: tuple[Any, ...], script: str | None = None
    ) -> asyncio.Future[Any]:
        """Queue ``command`` (on ``topic``'s keys or channel; EVALSHA of ``script``) for the next
        pipeline; a future of its reply (:class:`BackendUnavailable` if Redis fails it).

        The command is encoded here, in the caller's own call, so that an argument Redis cannot
        take fails that call alone (:class:`~megaphone.core.decoding.InvalidText` for text that is
        not valid Unicode) and never joins a pipeline: the pipeline holds only bytes."""
        encoded = self._encode(what, command)
        return self._enqueue(_Queued(_Call(what, script, topic, encoded), self._future()))

    def _future(self) -> asyncio.Future[Any]:
        return asyncio.get_running_loop().create_future()

    def _enqueue(self, queued: _Queued | _Publish) -> asyncio.Future[Any]:
        """Add ``queued`` to the next pipeline (started if none runs); the future of its reply."""
        self._queued.append(queued)
        if self._pipelines is None:
            self._pipelines = asyncio.ensure_future(self._send_pipelines())
        return queued.future

    def _encode(self, what: str, command: tuple[Any, ...]) -> tuple[bytes, ...]:
        """``command``'s arguments as the bytes Redis receives (text strictly UTF-8)."""
        encode = self._encode_arg
        try:
            return tuple(encode(arg) for arg in command)
        except UnicodeEncodeError as exc:
            raise _invalid_text(what) from exc

    async def _send_pipelines(self) -> None:
        """Send what is queued as one pipeline, then what was queued meanwhile, until nothing
        is: one pipeline in flight at a time, so scripts run in the order they were queued.
        (The task's first step runs on the loop's next turn: everything queued during this one
        goes in the first pipeline.)

        :meth:`_pipeline` settles every call it is given and raises only when cancelled, so
        no call queued meanwhile is stranded behind a pipeline that failed."""
        try:
            while self._queued:
                queued, self._queued = self._queued, []
                await self._pipeline(queued)
        finally:
            self._pipelines = None

    async def _pipeline(self, queued: list[_Queued | _Publish]) -> None:
        """Run ``queued`` in one round trip, in order, and settle their futures. The pipeline
        loads its scripts first (a no-op once Redis has them), so it never meets NOSCRIPT after
        a Redis restart. A connection error fails every script of the pipeline (some may have
        been applied, as with any lost answer). Any other error (a bug) fails them the same way,
        and is logged with its traceback."""
        try:
            calls = self._calls(queued)
            replies = await self._replies([call for call, _ in calls])
        except asyncio.CancelledError:
            _settle(queued, lambda q: BackendUnavailable("the backend stopped"))
            raise
        except Exception as exc:
            if not isinstance(exc, TimeoutError | RedisError | OSError):
                logger.exception("a Redis pipeline of %d script calls failed", len(queued))
            cause = exc  # ``exc`` is unbound once the except clause ends
            _settle(queued, lambda q: self._redis_error(q.what, cause))
            return
        for (_, answered), reply in zip(calls, replies, strict=True):
            if isinstance(answered, _Queued):
                self._answer(answered, reply)
            elif isinstance(reply, BackendUnavailable | ResponseError):
                for publish in answered:  # the whole call failed
                    self._answer(publish, reply)
            else:
                for publish, one in zip(answered, reply, strict=True):
                    self._answer(publish, one)

    def _answer(self, queued: _Queued | _Publish, reply: Any) -> None:
        """Settle ``queued``'s future with ``reply`` (a failure if Redis failed it)."""
        if queued.future.done():  # the caller went away; the script ran all the same
            return
        if isinstance(reply, BackendUnavailable):
            queued.future.set_exception(reply)
        elif isinstance(reply, ResponseError):
            queued.future.set_exception(self._redis_error(queued.what, reply))
        else:
            queued.future.set_result(reply)

    def _calls(
        self, queued: list[_Queued | _Publish]
    ) -> list[tuple[_Call, _Queued | list[_Publish]]]:
        """The calls a pipeline sends for ``queued``, in order, each with what it answers: a
        plain call answers itself; consecutive publishes on one topic (up to
        :data:`PUBLISH_BATCH`) are one call of the publish script, answering a reply each.
        The script applies them in order, each as its own script would have (its own offset,
        msg_id check and PUBLISH; a failure fails it alone), so order and every guarantee of
        a publish stay those of one script per publish; what they share is one clock reading,
        one look at the topic's epoch and trimming, one round of Redis's script machinery."""
        calls: list[tuple[_Call, _Queued | list[_Publish]]] = []
        run: list[_Publish] = []
        for q in queued:
            if isinstance(q, _Publish):
                if run and (run[0].topic != q.topic or len(run) == PUBLISH_BATCH):
                    calls.append((self._publish_call(run), run))
                    run = []
                run.append(q)
                continue
            if run:
                calls.append((self._publish_call(run), run))
                run = []
            calls.append((q.call, q))
        if run:
            calls.append((self._publish_call(run), run))
        return calls

    def _publish_call(self, run: list[_Publish]) -> _Call:
        """One call of the publish script for ``run`` (publishes on one topic, in order)."""
        first = run[0]
        script = self.scripts.publish
        keys = _keys(first.topic)
        head = self._encode(first.what, (*self._script_args(first.topic), first.channel))
        sha = self._encode(first.what, ("EVALSHA", sha1(script), len(keys), *keys))
        messages = [part for publish in run for part in publish.message]
        return _Call(first.what, script, first.topic, (*sha, *head, *messages))

    async def _replies(self, calls: list[_Call]) -> list[Any]:
        """Send ``calls`` in one pipeline, their scripts loaded first; each call's reply (a
        :class:`ResponseError` if Redis failed it). A lost connection raises."""
        loads = script_loads(calls)
        replies = await run_pipeline(self._pool, [*loads, *(call.command for call in calls)])
        return replies[len(loads) :]

    async def forward(self, message: Message) -> None:
        channel = self._channel(message.topic)
        command = (self.scripts.fanout, channel, _encode_wire(message))
        await self._queue(f"forward on {message.topic!r}", message.topic, command)

    async def history(self, topic: str, since: int = 0, limit: int | None = None) -> HistoryPage:
        args = [*self._script_args(topic), since, -1 if limit is None else limit]
        offset, epoch, complete, entries = await self._topic_script(
            f"read the history of {topic!r}", self.scripts.history, topic, _keys(topic), args
        )
        messages = []
        for entry_id, fields in entries:
            try:
                t, kind, payload = fields[1], fields[3], fields[5]
                offset_of = int(entry_id.split(b"-")[0])
                messages.append(_message(topic, offset_of, epoch, t, kind, payload))
            except (ValueError, IndexError):  # not written by Megaphone: invalid UTF-8, say
                # Never the body in the logs; readers see the gap it leaves, as for a lost one.
                logger.error("undecodable history entry %r of %r skipped", entry_id, topic)
        return HistoryPage(messages, int(offset), epoch.decode(), bool(complete))

    async def ping(self) -> None:
        await self._call("answer PING", self._client.ping())

    async def listened_topics(self) -> dict[str, int]:
        """Every topic that some node listens to, in any process on any machine using this Redis
        (and database), with how many nodes (worker processes) listen: ``PUBSUB CHANNELS`` of
        this backend's channels, then ``PUBSUB NUMSUB``. Exact at the moment Redis answers; a
        node listens while it has at least one subscriber on the topic."""
        prefix = self._channel_prefix
        channels = await self._call(
            "list the pub/sub channels", self._client.pubsub_channels(f"{prefix}{{*}}")
        )
        if not channels:
            return {}
        counts = await self._call("count the subscribers", self._client.pubsub_numsub(*channels))
        start = len(prefix) + 1  # the topic is between "{" and the final "}"
        listened: dict[str, int] = {}
        for channel, count in counts:
            name = channel.decode() if isinstance(channel, bytes) else str(channel)
            listened[name[start:-1]] = int(count)
        return listened

    def _presence_keys(self, topic: str) -> list[str]:
        return [f"megaphone:{{{topic}}}:presence", f"megaphone:{{{topic}}}:presence:info"]

    async def presence_add(self, topic: str, client: str, info: dict[str, object]) -> None:
        """Entries expire ``presence_ttl`` seconds after they were last added."""
        args = [client, json.dumps(info, separators=(",", ":")), ceil_ms(self.presence_ttl)]
        keys = self._presence_keys(topic)
        await self._topic_script(f"add presence on {topic!r}", _PRESENCE_ADD, topic, keys, args)

    async def presence_remove(self, topic: str, client: str) -> None:
        keys = self._presence_keys(topic)
        what = f"remove presence on {topic!r}"
        await self._topic_script(what, _PRESENCE_REMOVE, topic, keys, [client])

    async def presence(self, topic: str) -> dict[str, dict[str, object]]:
        keys = self._presence_keys(topic)
        what = f"read presence on {topic!r}"
        flat = await self._topic_script(what, _PRESENCE, topic, keys, [])
        return {flat[i].decode(): json.loads(flat[i + 1]) for i in range(0, len(flat), 2)}

    # Pub/sub --------------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        """Return once Redis confirmed the subscription and the topic's position is known, so
        every message published from then on reaches ``on_message``. While the pub/sub
        connection is (re)connecting, wait for it up to :data:`SOCKET_TIMEOUT` seconds, then
        raise :class:`BackendUnavailable`."""
        channel = self._channel(topic)
        if channel in self._topics:
            return
        if not self._ready.is_set():
            try:
                await asyncio.wait_for(self._ready.wait(), SOCKET_TIMEOUT)
            except TimeoutError:
                raise BackendUnavailable(
                    f"no pub/sub connection to Redis within {SOCKET_TIMEOUT} s; "
                    f"cannot subscribe to {topic!r}"
                ) from None
            if channel in self._topics:
                return
        self._topics[channel] = topic
        try:
            connection = self._pubsub
            if connection is None or not connection.is_connected:
                raise BackendUnavailable(f"the Redis pub/sub connection broke; {topic!r} missed")
            ack = asyncio.get_running_loop().create_future()
            self._acks.setdefault(channel, collections.deque()).append(ack)
            await self._call(
                f"subscribe to {topic!r}", send_pubsub(connection, "SUBSCRIBE", channel)
            )
            try:
                await asyncio.wait_for(ack, SOCKET_TIMEOUT)
            except TimeoutError:
                raise BackendUnavailable(
                    f"Redis did not confirm the subscription to {topic!r}"
                ) from None
            page = await self.history(topic, 0, 0)
        except BaseException:
            if self._topics.get(channel) == topic:
                del self._topics[channel]
            raise
        self._advance(topic, page.epoch, page.offset)
        self._schedule_refresh(topic)

    async def unsubscribe(self, topic: str) -> None:
        channel = self._channel(topic)
        if self._topics.pop(channel, None) is None:
            return
        self._refresh_at.pop(topic, None)
        self._positions.pop(topic, None)
        self._caught_up.pop(topic, None)
        connection = self._pubsub
        if connection is not None and connection.is_connected:
            # Best effort: if this fails, the connection is broken and the reader's reconnect
            # subscribes only the topics still wanted.
            with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
                await send_pubsub(connection, "UNSUBSCRIBE", channel)

    def _advance(self, topic: str, epoch: str, offset: int) -> None:
        advance(self._positions, topic, epoch, offset)

    async def _open_pubsub(self) -> AbstractConnection:
        """A connected pub/sub connection subscribed to nothing yet."""
        try:
            connection = await open_pubsub(self._pool)
        except (TimeoutError, RedisError, OSError) as exc:
            raise self._redis_error("open the pub/sub connection", exc) from exc
        self._pubsub = connection
        return connection

    async def _close_pubsub(self) -> None:
        connection, self._pubsub = self._pubsub, None
        for acks in self._acks.values():
            for ack in acks:
                if not ack.done():
                    ack.set_exception(BackendUnavailable("the Redis pub/sub connection was lost"))
                    ack.exception()  # retrieved: nobody may be waiting any more
        self._acks.clear()
        if connection is not None:
            await connection.disconnect()

    async def _read_forever(self) -> None:
        """Connect, subscribe and catch up, read; start again whenever the connection breaks."""
        attempt = 0
        while True:
            try:
                connection = await self._open_pubsub()
                await self._resubscribe(connection)
                if attempt:
                    logger.info("Redis pub/sub connection restored; %d topics", len(self._topics))
                attempt = 0
                self._ready.set()
                await self._read(connection)
            except (TimeoutError, BackendUnavailable, RedisError, OSError) as exc:
                if attempt == 0:
                    logger.warning("Redis pub/sub connection down: %s", exc)
                else:
                    logger.debug("Redis pub/sub reconnect failed: %s", exc)
            except Exception:  # a bug: logged, and the reader starts again (never a deaf one)
                logger.exception("Redis pub/sub reader failed; reconnecting")
            self._ready.clear()
            await self._close_pubsub()
            delay = min(RECONNECT_MAX_DELAY, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
            attempt += 1
            await asyncio.sleep(delay)

    async def _resubscribe(self, connection: AbstractConnection) -> None:
        """Subscribe every wanted topic again, then deliver what was missed while deaf."""
        channels = list(self._topics)
        if channels:
            await send_pubsub(connection, "SUBSCRIBE", *channels)
        live: list[tuple[bytes, bytes]] = []
        waiting = set(channels)
        while waiting:
            reply = await connection.read_response(timeout=SOCKET_TIMEOUT)
            if reply is None:
                raise BackendUnavailable("Redis did not confirm the resubscription")
            kind = reply[0]
            if kind == b"subscribe":
                waiting.discard(reply[1])
                self._confirm(reply[1])
            elif kind == b"message":
                live.append((reply[1], reply[2]))
        for channel in channels:
            topic = self._topics.get(channel)
            if topic is not None:
                await self._catch_up(topic)
        for channel, data in live:
            self._dispatch(channel, data)

    async def _catch_up(self, topic: str) -> None:
        """Deliver ``topic``'s messages published since the last one delivered here."""
        position = self._positions.get(topic)
        if position is None:
            return
        page = await missed(topic, position, self.history, self._renew, store="Redis")
        for message in page.messages:
            self._deliver(message)
        if self._topics.get(self._channel(topic)) == topic:
            self._caught_up[topic] = (page.epoch, page.offset)
            self._advance(topic, page.epoch, page.offset)

    async def _renew(self, topic: str, epoch: str, offset: int) -> None:
        what = f"renew the epoch of {topic!r}"
        await self._topic_script(what, _FORGET_ROLLED_BACK, topic, _keys(topic), [epoch, offset])

    def _confirm(self, channel: bytes) -> None:
        acks = self._acks.get(channel)
        if acks:
            ack = acks.popleft()
            if not ack.done():
                ack.set_result(None)
            if not acks:
                del self._acks[channel]

    async def _read(self, connection: AbstractConnection) -> None:
        """Dispatch messages until the connection breaks or stops answering PINGs."""
        await read_pubsub(connection, self._reply)

    def _reply(self, reply: Any) -> bool:
        """One reply of the pub/sub connection (an error breaks it); never the last."""
        if isinstance(reply, ResponseError):
            raise reply
        kind = reply[0]
        if kind == b"message":
            self._dispatch(reply[1], reply[2])
        elif kind == b"subscribe":
            self._confirm(reply[1])
        return False

    def _dispatch(self, channel: bytes, data: bytes) -> None:
        topic = self._topics.get(channel)
        if topic is None:  # unsubscribed meanwhile
            return
        try:
            message = _decode_wire(topic, data)
        except (ValueError, UnicodeDecodeError):
            # Never the body in the logs; the gap it leaves is filled from history by sessions.
            logger.error("undecodable message of %d bytes on %r dropped", len(data), topic)
            return
        caught_up = self._caught_up.get(topic)
        if caught_up is not None:
            if caught_up[0] == message.epoch and message.offset <= caught_up[1]:
                return  # already delivered while catching up
            del self._caught_up[topic]
        self._deliver(message)

    def _deliver(self, message: Message) -> None:
        self._advance(message.topic, message.epoch, message.offset)
        callback = self._on_message
        if callback is not None:
            callback(message)
