"""The Redis backend on a Redis Cluster: ``redis+cluster://[user:password@]host:port,host:port/``.

The hosts are seed nodes of the cluster (any of them, masters or replicas: the backend learns the
rest with ``CLUSTER SLOTS``); a Cluster has only database 0, so the path is empty. Redis 7 or
later (sharded pub/sub).

Everything :mod:`megaphone.backends.redis` guarantees holds, shard by shard; what the Cluster
changes:

* **A topic lives on one shard.** Every key of a topic and its channel carry the ``{topic}``
  hash tag, so they share one hash slot: the publish script (numbering, history, fan-out) runs
  atomically on the master owning the slot, as on one Redis.
* **Sharded pub/sub, one SPUBLISH per message.** The publish script fans a message out with
  ``SPUBLISH`` on its shard only; a worker holds one ``SSUBSCRIBE`` connection per shard owning
  a topic it has clients for (opened when its first such topic is subscribed, closed with the
  last), subscribed to exactly those topics.
* **Routing by slot, redirections followed.** Calls go to the master the backend's slot map
  names, pipelined per master, in call order per topic (a topic is on one master). ``MOVED``
  updates the map and sends the call again to the new owner; ``ASK`` sends it once to the node
  named, after ``ASKING``; ``TRYAGAIN`` (a slot half migrated) and ``CLUSTERDOWN`` (a master
  lost, its replica not promoted yet) are retried for at most :data:`SOCKET_TIMEOUT` seconds
  (the worker's later calls wait behind them: one pipeline in flight at a time is what keeps
  call order). All of these mean Redis did not run the call, so nothing runs twice. A lost
  connection fails its calls loudly (:class:`~megaphone.backends.base.BackendUnavailable`: a
  publish may or may not have been applied, never silently retried) and the map is read again
  before the next call.
* **Resharding loses nothing.** When a slot moves (``redis-cli --cluster reshard``), its keys
  travel with it (``MIGRATE``), and the old master ends its shard subscriptions
  (``sunsubscribe``): the backend subscribes the topics again on the new owner, then reads each
  one's history after the last offset it delivered and hands the missed messages over before
  any live one, in the same epoch (``recovered: true``). A subscription the node asks for while
  the slot moves is sent where the map, or the ``MOVED`` reply, says.
* **A failover is never a silent loss.** As with Sentinel, a promoted replica may lack the last
  writes its master acknowledged: the topics of its slots start a new epoch on first use, so
  their subscribers are told (``recovered: false``). The rule (:data:`CLUSTER`): a topic's keys
  stamped with this master's *previous* replication id (``master_replid2``: it was a replica of
  the master that stamped them, and was promoted) start a new epoch; keys stamped by any other
  master came by ``MIGRATE`` (a lossless move) and keep their epoch, stamped again with this
  master's id. The pub/sub connection to the lost master breaks; its topics are subscribed again
  on the new owner once the cluster names one, and caught up as above.

Why not redis-py's own ``RedisCluster`` and ``ClusterPubSub`` (redis-py 8.1 has sharded pub/sub in
asyncio)? Its pub/sub reads the shards by polling them in turn, and hides the ``sunsubscribe`` of
a moved slot and the subscription confirmations this backend orders its catching up by; its
command client retries calls after a lost connection, which could publish twice. So the backend
keeps its own slot map (``CLUSTER SLOTS``), one bounded connection pool per master
(:data:`~megaphone.backends.redis.POOL_OPTIONS`) and one reader per shard connection.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import random
import time
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.asyncio.connection import AbstractConnection, BlockingConnectionPool
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot
from redis.exceptions import (
    AskError,
    ClusterDownError,
    MovedError,
    RedisError,
    ResponseError,
    TryAgainError,
)

from megaphone.backends.base import BackendUnavailable, MessageCallback
from megaphone.backends.redis import (
    POOL_OPTIONS,
    RECONNECT_MAX_DELAY,
    SOCKET_TIMEOUT,
    RedisBackend,
    Scripts,
    _Call,
    _cancel,
    _keys,
    open_pubsub,
    read_pubsub,
    run_pipeline,
    script_loads,
    send_pubsub,
)
from megaphone.core.logs import get_logger

logger = get_logger(__name__)

#: A node of the cluster: (host, port).
Address = tuple[str, int]

#: The scripts on a Cluster: a new epoch when the keys were stamped by the master this one was
#: the replica of (a failover), not when they came from another shard (resharding).
CLUSTER = Scripts(
    "not stamped or stamped == string.match(replication, 'master_replid2:(%w+)')", "SPUBLISH"
)

#: Seconds between two attempts of a call Redis refused with TRYAGAIN or CLUSTERDOWN.
RETRY_PAUSE = 0.02


class ClusterURL:
    """A parsed ``redis+cluster://`` URL; :class:`ValueError` says what is wrong with one."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis+cluster":
            raise ValueError(f"not a redis+cluster:// URL: {url!r}")
        userinfo, _, hosts = parts.netloc.rpartition("@")
        self.seeds: list[Address] = []
        for address in hosts.split(","):
            host, colon, port = address.rpartition(":")
            if not colon or not host or not port.isdigit():
                raise ValueError(f"Cluster node address {address!r} is not host:port in {url!r}")
            self.seeds.append((host.strip("[]"), int(port)))
        if parts.path.strip("/") not in ("", "0"):
            raise ValueError(f"a Redis Cluster has only database 0; remove the path of {url!r}")
        user, _, password = userinfo.partition(":")
        self.username = unquote(user) or None
        self.password = unquote(password) or None


class SlotMap:
    """Which master serves each hash slot, as the cluster last said (``CLUSTER SLOTS``, then
    ``MOVED`` replies); :attr:`stale` once a call found it may be wrong."""

    def __init__(self, seeds: list[Address]) -> None:
        self.seeds = seeds
        self.stale = True
        self._owners: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        #: Every node seen in the cluster's answers, masters first.
        self.nodes: list[Address] = []

    def owner(self, slot: int) -> Address | None:
        return self._owners[slot]

    def masters(self) -> set[Address]:
        return {owner for owner in self._owners if owner is not None}

    def moved(self, slot: int, address: Address) -> None:
        self._owners[slot] = address

    def load(self, reply: list[Any], answered_by: Address) -> bool:
        """Take ``CLUSTER SLOTS``'s ``reply``; whether it covers every slot."""
        owners: list[Address | None] = [None] * REDIS_CLUSTER_HASH_SLOTS
        masters: dict[Address, None] = {}
        replicas: dict[Address, None] = {}
        for start, end, master, *others in reply:
            address = _address(master, answered_by)
            masters[address] = None
            for replica in others:
                replicas[_address(replica, answered_by)] = None
            owners[int(start) : int(end) + 1] = [address] * (int(end) - int(start) + 1)
        self._owners = owners
        self.nodes = [*masters, *(r for r in replicas if r not in masters)]
        self.stale = False
        return None not in owners


def _address(node: list[Any], answered_by: Address) -> Address:
    host = node[0].decode() if isinstance(node[0], bytes) else str(node[0])
    return (host or answered_by[0], int(node[1]))


def slot_of(topic: str) -> int:
    """The hash slot of every key and the channel of ``topic``."""
    return key_slot(_keys(topic)[0].encode())


class _Shard:
    """One SSUBSCRIBE connection to a master, and what it was sent: ``(command, channel, ack)``
    for each (S)SUBSCRIBE/SUNSUBSCRIBE not answered yet, in order (Redis answers in order)."""

    def __init__(self, address: Address, connection: AbstractConnection) -> None:
        self.address = address
        self.connection = connection
        self.channels: set[bytes] = set()
        self.sent: collections.deque[tuple[bytes, bytes, asyncio.Future[None] | None]] = (
            collections.deque()
        )
        self.reader: asyncio.Task[None] | None = None


class RedisClusterBackend(RedisBackend):
    """:class:`~megaphone.backends.redis.RedisBackend` on a Redis Cluster; see the module
    docstring."""

    scripts = CLUSTER

    def _connection_pool(self, url: str) -> BlockingConnectionPool:
        """The first seed's pool: the template of every node's (its connection class and
        options); the backend routes every call itself."""
        try:
            self._url = ClusterURL(url)
        except ValueError as exc:
            raise ValueError(f"invalid Redis Cluster URL {url!r}: {exc}") from None
        self._pools: dict[Address, BlockingConnectionPool] = {}
        self._map = SlotMap(self._url.seeds)
        self._refreshing: asyncio.Future[None] | None = None
        # Pub/sub: a shard per master with topics here, the shard each channel is confirmed
        # on, channels wanted but on no shard (the rehomer's work), and the live messages of a
        # channel held while it catches up.
        self._shards: dict[Address, _Shard] = {}
        self._opening: dict[Address, asyncio.Future[_Shard]] = {}
        self._homes: dict[bytes, _Shard] = {}
        self._homeless: set[bytes] = set()
        self._holding: dict[bytes, list[bytes]] = {}
        self._wake = asyncio.Event()
        self._rehomer: asyncio.Task[None] | None = None
        return self._pool_of(self._url.seeds[0])

    def _pool_of(self, address: Address) -> BlockingConnectionPool:
        pool = self._pools.get(address)
        if pool is None:
            pool = BlockingConnectionPool(
                host=address[0],
                port=address[1],
                username=self._url.username,
                password=self._url.password,
                **POOL_OPTIONS,
            )
            self._pools[address] = pool
        return pool

    def _where(self) -> str:
        return "Redis Cluster at " + ",".join(f"{h}:{p}" for h, p in self._url.seeds)

    # The slot map ---------------------------------------------------------------------------

    async def _refresh(self) -> None:
        """Read the slot map again; concurrent callers share one reading."""
        task = self._refreshing
        if task is None:
            task = self._refreshing = asyncio.ensure_future(self._load_map())
            task.add_done_callback(self._refreshed)
        await asyncio.shield(task)

    def _refreshed(self, task: asyncio.Future[None]) -> None:
        if self._refreshing is task:
            self._refreshing = None
        if not task.cancelled():
            task.exception()  # retrieved: each waiter raised it

    async def _load_map(self) -> None:
        """``CLUSTER SLOTS`` of the first node that answers (known ones first, then the seeds),
        asking for at most :data:`SOCKET_TIMEOUT` seconds."""
        candidates = list(dict.fromkeys([*self._map.nodes, *self._url.seeds]))
        error: BaseException | None = None
        deadline = time.monotonic() + SOCKET_TIMEOUT
        for address in candidates:
            if time.monotonic() > deadline:  # nodes that time out, not refuse: stop asking
                break
            try:
                (reply,) = await run_pipeline(self._pool_of(address), [("CLUSTER", "SLOTS")])
            except (TimeoutError, RedisError, OSError) as exc:
                error = exc
                continue
            if isinstance(reply, ResponseError):
                error = reply
                continue
            if self._map.load(reply, address):
                return
            error = BackendUnavailable(f"{address} answered with slots no master serves")
        if self._map.stale:
            raise BackendUnavailable(f"no node of the {self._where()} answered: {error}")

    # Commands, routed -----------------------------------------------------------------------

    async def _replies(self, queued: list[_Call]) -> list[Any]:
        """Each call's reply, from the master owning its topic's slot: one pipeline per master,
        in call order, redirections followed (see the module docstring). A call that cannot be
        run gets a :class:`BackendUnavailable` as its reply."""
        replies: list[Any] = [None] * len(queued)
        pending = list(range(len(queued)))
        asking: dict[int, Address] = {}
        deadline = time.monotonic() + SOCKET_TIMEOUT
        while True:
            if self._map.stale:
                try:
                    await self._refresh()
                except BackendUnavailable as exc:
                    for i in pending:
                        replies[i] = exc
                    return replies
            groups: dict[Address, list[int]] = {}
            for i in pending:
                address = asking.get(i) or self._map.owner(slot_of(queued[i].topic))
                if address is None:
                    replies[i] = BackendUnavailable(f"no master serves {queued[i].topic!r}")
                else:
                    groups.setdefault(address, []).append(i)
            results = await asyncio.gather(
                *(
                    self._node_replies(address, [(queued[i], i in asking) for i in calls])
                    for address, calls in groups.items()
                ),
                return_exceptions=True,
            )
            retry, pause, last = [], False, None
            for (address, calls), result in zip(groups.items(), results, strict=True):
                if isinstance(result, BaseException):
                    if not isinstance(result, TimeoutError | RedisError | OSError):
                        raise result  # cancelled, or a bug: the pipeline fails it loudly
                    self._map.stale = True
                    error = BackendUnavailable(f"Redis Cluster node {address} failed: {result}")
                    for i in calls:
                        replies[i] = error
                    continue
                for i, reply in zip(calls, result, strict=True):
                    asking.pop(i, None)
                    if isinstance(reply, MovedError):
                        self._map.moved(reply.slot_id, (reply.host, int(reply.port)))
                    elif isinstance(reply, AskError):
                        asking[i] = (reply.host, int(reply.port))
                    elif isinstance(reply, TryAgainError | ClusterDownError):
                        pause = True
                    else:
                        replies[i] = reply
                        continue
                    retry.append(i)
                    last = reply
            if not retry:
                return replies
            if time.monotonic() > deadline:
                for i in retry:
                    replies[i] = BackendUnavailable(
                        f"{self._where()} could not {queued[i].what} for {SOCKET_TIMEOUT} s "
                        f"(a slot moving, or a master lost): {last}"
                    )
                return replies
            pending = sorted(retry)
            if pause:
                await asyncio.sleep(RETRY_PAUSE)  # pacing retries, not waiting for an event

    async def _node_replies(self, address: Address, calls: list[tuple[_Call, bool]]) -> list[Any]:
        """Run ``calls`` (each with whether it follows an ASK) in one pipeline on ``address``."""
        commands: list[tuple[Any, ...]] = [*script_loads([q for q, _ in calls])]
        positions = []
        for q, ask in calls:
            if ask:
                commands.append(("ASKING",))
            positions.append(len(commands))
            commands.append(q.command)
        replies = await run_pipeline(self._pool_of(address), commands)
        return [replies[p] for p in positions]

    async def _on_masters(self, what: str, command: tuple[Any, ...]) -> dict[Address, Any]:
        """``command``'s reply from every master."""
        if self._map.stale:
            await self._refresh()
        masters = sorted(self._map.masters())
        results = await asyncio.gather(
            *(run_pipeline(self._pool_of(a), [command]) for a in masters), return_exceptions=True
        )
        replies = {}
        for address, result in zip(masters, results, strict=True):
            if isinstance(result, BaseException):
                if not isinstance(result, TimeoutError | RedisError | OSError):
                    raise result
                self._map.stale = True
                raise BackendUnavailable(
                    f"Redis Cluster master {address} failed to {what}: {result}"
                )
            if isinstance(result[0], ResponseError):
                self._map.stale = True
                raise BackendUnavailable(
                    f"Redis Cluster master {address} failed to {what}: {result[0]}"
                )
            replies[address] = result[0]
        return replies

    async def ping(self) -> None:
        """Every master answers PING."""
        await self._on_masters("answer PING", ("PING",))

    async def listened_topics(self) -> dict[str, int]:
        """Like :meth:`RedisBackend.listened_topics`, from every master's shard channels
        (``PUBSUB SHARDCHANNELS``, ``PUBSUB SHARDNUMSUB``)."""
        prefix = self._channel_prefix
        listed = await self._on_masters(
            "list the shard channels", ("PUBSUB", "SHARDCHANNELS", f"{prefix}{{*}}")
        )
        listened: dict[str, int] = {}
        start = len(prefix) + 1  # the topic is between "{" and the final "}"
        for address, channels in listed.items():
            if not channels:
                continue
            (counts,) = await run_pipeline(
                self._pool_of(address), [("PUBSUB", "SHARDNUMSUB", *channels)]
            )
            if isinstance(counts, ResponseError):
                raise BackendUnavailable(f"Redis Cluster master {address}: {counts}")
            for channel, count in zip(counts[::2], counts[1::2], strict=True):
                name = channel.decode()[start:-1]
                listened[name] = listened.get(name, 0) + int(count)
        return listened

    # Lifecycle ------------------------------------------------------------------------------

    async def start(self, on_message: MessageCallback) -> None:
        """Start the rehomer (it subscribes again the topics of a lost or moved shard)."""
        self._on_message = on_message
        self._rehomer = asyncio.get_running_loop().create_task(self._rehome_forever())

    async def stop(self) -> None:
        rehomer, self._rehomer = self._rehomer, None
        tasks = [rehomer, *self._opening.values(), self._refreshing]
        for task in tasks:
            if task is not None:
                await _cancel(task)  # type: ignore[arg-type]  # a Task or a Future of one
        for shard in list(self._shards.values()):
            await self._close_shard(shard)
        await super().stop()
        for pool in self._pools.values():
            await pool.disconnect()

    # Sharded pub/sub ------------------------------------------------------------------------

    async def subscribe(self, topic: str) -> None:
        """Return once the master owning ``topic`` confirmed the subscription and the topic's
        position is known; follow ``MOVED``, and retry a lost or refused connection, for at most
        :data:`SOCKET_TIMEOUT` seconds, then raise :class:`BackendUnavailable`."""
        channel = self._channel(topic)
        if channel in self._topics:
            return
        self._topics[channel] = topic
        try:
            await self._place(channel, topic)
            page = await self.history(topic, 0, 0)
        except BaseException:
            if self._topics.get(channel) == topic:
                del self._topics[channel]
                await self._leave(channel)
            raise
        self._advance(topic, page.epoch, page.offset)
        self._schedule_refresh(topic)

    async def unsubscribe(self, topic: str) -> None:
        channel = self._channel(topic)
        if channel not in self._topics:
            return
        await super().unsubscribe(topic)  # forgets the topic (no pub/sub connection of its own)
        await self._leave(channel)

    async def _leave(self, channel: bytes) -> None:
        """Stop listening to ``channel`` (best effort); close its shard if it has no more."""
        self._homeless.discard(channel)
        self._holding.pop(channel, None)
        shard = self._homes.pop(channel, None)
        if shard is not None:
            await self._leave_shard(shard, channel)

    async def _leave_shard(self, shard: _Shard, channel: bytes) -> None:
        shard.channels.discard(channel)
        if not shard.channels and not any(ack for _, _, ack in shard.sent):
            await self._close_shard(shard)
            return
        shard.sent.append((b"sunsubscribe", channel, None))
        with contextlib.suppress(RedisError, OSError, asyncio.TimeoutError):
            await send_pubsub(shard.connection, "SUNSUBSCRIBE", channel)

    async def _place(self, channel: bytes, topic: str) -> _Shard:
        """Subscribe ``channel`` on the master owning its slot, following ``MOVED`` and
        retrying failures until :data:`SOCKET_TIMEOUT` seconds have passed."""
        deadline = time.monotonic() + SOCKET_TIMEOUT
        delay = 0.05
        while True:
            try:
                if self._map.stale:
                    await self._refresh()
                address = self._map.owner(key_slot(channel))
                if address is None:
                    raise BackendUnavailable(f"no master serves {topic!r}")
                shard = await self._shard(address)
                await self._ssubscribe(shard, channel, topic)
                if channel not in self._topics:  # unsubscribed meanwhile: undo
                    await self._leave_shard(shard, channel)
                return shard
            except MovedError as exc:
                self._map.moved(exc.slot_id, (exc.host, int(exc.port)))
                error: BaseException = exc
                pause = 0.0
            except (BackendUnavailable, TimeoutError, RedisError, OSError) as exc:
                self._map.stale = True
                error, pause = exc, delay * random.uniform(0.5, 1.0)
                delay = min(2 * delay, RECONNECT_MAX_DELAY)
            if time.monotonic() + pause > deadline:
                raise BackendUnavailable(
                    f"{self._where()}: cannot subscribe to {topic!r}: {error}"
                ) from error
            if pause:
                await asyncio.sleep(pause)  # backoff between attempts, not a synchronisation

    async def _ssubscribe(self, shard: _Shard, channel: bytes, topic: str) -> None:
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        shard.sent.append((b"ssubscribe", channel, ack))
        await send_pubsub(shard.connection, "SSUBSCRIBE", channel)
        try:
            await asyncio.wait_for(ack, SOCKET_TIMEOUT)
        except TimeoutError:
            raise BackendUnavailable(f"{shard.address} did not confirm {topic!r}") from None

    async def _shard(self, address: Address) -> _Shard:
        """The shard connection to ``address``, opened if need be (by one caller at a time)."""
        shard = self._shards.get(address)
        if shard is not None and shard.connection.is_connected:
            return shard
        opening = self._opening.get(address)
        if opening is None:
            opening = self._opening[address] = asyncio.ensure_future(self._open_shard(address))
            opening.add_done_callback(lambda task: self._opened(address, task))
        return await asyncio.shield(opening)

    def _opened(self, address: Address, task: asyncio.Future[_Shard]) -> None:
        if self._opening.get(address) is task:
            del self._opening[address]
        if not task.cancelled():
            task.exception()  # retrieved: each waiter raised it

    async def _open_shard(self, address: Address) -> _Shard:
        try:
            connection = await open_pubsub(self._pool_of(address))
        except (TimeoutError, RedisError, OSError) as exc:
            raise BackendUnavailable(
                f"cannot open a pub/sub connection to {address}: {exc}"
            ) from exc
        shard = _Shard(address, connection)
        self._shards[address] = shard
        shard.reader = asyncio.get_running_loop().create_task(self._read_shard(shard))
        return shard

    async def _close_shard(self, shard: _Shard) -> None:
        if self._shards.get(shard.address) is shard:
            del self._shards[shard.address]
        if shard.reader is not None:
            await _cancel(shard.reader)
        self._fail_acks(shard)
        await shard.connection.disconnect()

    def _fail_acks(self, shard: _Shard) -> None:
        sent, shard.sent = shard.sent, collections.deque()
        for _, _, ack in sent:
            if ack is not None and not ack.done():
                ack.set_exception(BackendUnavailable(f"lost the connection to {shard.address}"))
                ack.exception()  # retrieved: nobody may be waiting any more

    async def _read_shard(self, shard: _Shard) -> None:
        """Read ``shard``'s replies until its connection breaks; then its channels are homeless
        (the rehomer subscribes them again where the cluster says, and catches them up)."""
        try:
            await self._shard_replies(shard)
            logger.debug("%s serves no topic of ours any more: closed", shard.address)
        except (TimeoutError, BackendUnavailable, RedisError, OSError) as exc:
            logger.warning("Redis Cluster pub/sub connection to %s lost: %s", shard.address, exc)
        except Exception:  # a bug: logged, and the channels are subscribed again
            logger.exception("Redis Cluster pub/sub reader of %s failed", shard.address)
        if self._shards.get(shard.address) is shard:
            del self._shards[shard.address]
        self._map.stale = True
        self._fail_acks(shard)
        for channel in shard.channels:
            if self._homes.get(channel) is shard:
                self._lose(channel)
        await shard.connection.disconnect()

    def _lose(self, channel: bytes) -> None:
        """``channel`` is subscribed nowhere now: deaf until the rehomer places it again."""
        self._homes.pop(channel, None)
        self._holding.pop(channel, None)
        if channel in self._topics:
            self._homeless.add(channel)
            self._wake.set()

    async def _shard_replies(self, shard: _Shard) -> None:
        """Handle ``shard``'s replies; return once Redis ended its last subscription (its
        slots moved away) and nothing waits for an answer."""
        await read_pubsub(shard.connection, functools.partial(self._shard_reply, shard))

    def _shard_reply(self, shard: _Shard, reply: Any) -> bool:
        """One of ``shard``'s replies; True once Redis ended its last subscription."""
        if isinstance(reply, ResponseError):  # the answer to the oldest command unanswered
            if shard.sent:
                _, _, ack = shard.sent.popleft()
                if ack is not None and not ack.done():
                    ack.set_exception(reply)
            return False
        if not isinstance(reply, list) or len(reply) < 2:
            return False  # PONG
        kind, channel = reply[0], reply[1]
        if kind == b"smessage":
            self._shard_message(channel, reply[2])
        elif kind == b"ssubscribe":
            self._subscribed(shard, channel)
        elif kind == b"sunsubscribe":
            if shard.sent and shard.sent[0][:2] == (b"sunsubscribe", channel):
                shard.sent.popleft()  # the answer to ours
            else:  # the slot moved away: Redis ended the subscription itself
                shard.channels.discard(channel)
                if self._homes.get(channel) is shard:
                    logger.info("%r moved away from %s", channel, shard.address)
                    self._lose(channel)
                if not shard.channels and not shard.sent:
                    return True
        return False

    def _subscribed(self, shard: _Shard, channel: bytes) -> None:
        if shard.sent:
            _, _, ack = shard.sent.popleft()
            if ack is not None and not ack.done():
                ack.set_result(None)
        if channel in self._topics:
            shard.channels.add(channel)
            self._homes[channel] = shard

    def _shard_message(self, channel: bytes, data: bytes) -> None:
        held = self._holding.get(channel)
        if held is not None:
            held.append(data)  # delivered after the messages it missed
        elif channel not in self._homeless:  # a homeless one catches up from history
            self._dispatch(channel, data)

    async def _rehome_forever(self) -> None:
        """Subscribe homeless channels again, with jittered exponential backoff."""
        attempt = 0
        while True:
            if not self._homeless:
                attempt = 0
                self._wake.clear()
                await self._wake.wait()
                continue
            if attempt:
                delay = min(RECONNECT_MAX_DELAY, 0.05 * 2**attempt) * random.uniform(0.5, 1.0)
                await asyncio.sleep(delay)
            attempt += 1
            try:
                self._map.stale = True
                await self._refresh()
                channels = sorted(self._homeless)
                results = await asyncio.gather(
                    *(self._rehome(channel) for channel in channels), return_exceptions=True
                )
                for result in results:
                    if isinstance(result, BaseException) and not isinstance(
                        result, TimeoutError | BackendUnavailable | RedisError | OSError
                    ):
                        raise result
                if not self._homeless:
                    logger.info("Redis Cluster subscriptions restored: %d topics", len(channels))
            except (TimeoutError, BackendUnavailable, RedisError, OSError) as exc:
                logger.debug("Redis Cluster resubscription failed: %s", exc)
            except Exception:  # a bug: logged, and the rehomer goes on (never a deaf topic)
                logger.exception("Redis Cluster resubscription failed")

    async def _rehome(self, channel: bytes) -> None:
        """Subscribe ``channel`` where its slot is now, then hand over what it missed, then what
        arrived meanwhile (repeats dropped)."""
        topic = self._topics.get(channel)
        if topic is None:
            self._homeless.discard(channel)
            return
        self._holding[channel] = []
        try:
            shard = await self._place(channel, topic)
            self._homeless.discard(channel)
            await self._catch_up(topic)
        except BaseException:
            self._holding.pop(channel, None)
            if channel in self._topics:
                self._homeless.add(channel)
            raise
        held = self._holding.pop(channel, [])
        if self._homes.get(channel) is shard:
            for data in held:
                self._dispatch(channel, data)
