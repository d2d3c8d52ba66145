"""The Redis backend behind Sentinel: ``redis+sentinel://host:port,host:port/<service>/<db>``.

The hosts are Sentinels; ``<service>`` is the name they monitor (``sentinel monitor <service>
...``), ``<db>`` the database (0 if left out). A password before the hosts
(``redis+sentinel://:secret@h1:26379,h2:26379/mymaster/0``) is the Redis servers' (``requirepass``);
``?sentinel_password=...`` is the Sentinels' own, if they require one.

Everything :mod:`megaphone.backends.redis` guarantees holds; what Sentinel adds:

* **Discovery.** Every connection (commands and pub/sub) asks the Sentinels, in turn, which
  server is the master of ``<service>`` when it connects, and connects to it. A connection whose
  server is no longer the master (killed, or demoted: it answers ``READONLY``, or Sentinel
  closed its clients) fails its calls loudly (:class:`~megaphone.backends.base.BackendUnavailable`)
  and the next connection goes to the master the Sentinels name then: publishing resumes by
  itself once they promoted a replica, and the pub/sub reader reconnects to the new master,
  resubscribes and catches up as after any lost connection.
* **A failover is never a silent loss.** Redis replicates asynchronously: a promoted replica may
  lack the last writes its master acknowledged. Every topic's epoch is stamped with the
  replication id of the master that created it, and a master with another replication id (a
  promoted replica always has a new one) starts the topic again in a new epoch on first use. So
  after a failover every subscriber is told (``recovered: false``) and nobody reuses an offset,
  whether writes were lost or not. The cost: a failover ends every topic's history (see
  docs/deploy.md for why this rather than ``WAIT``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool

from megaphone.backends.redis import CONNECT_TIMEOUT, POOL_OPTIONS, SOCKET_TIMEOUT, RedisBackend


class SentinelBlockingPool(SentinelConnectionPool, BlockingConnectionPool):
    """redis-py's Sentinel pool (each connection connects to the master the Sentinels name)
    with the bounds of :class:`~redis.asyncio.connection.BlockingConnectionPool`: callers wait
    for a free connection rather than open more than ``max_connections``."""


class SentinelURL:
    """A parsed ``redis+sentinel://`` URL; :class:`ValueError` says what is wrong with one."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme != "redis+sentinel":
            raise ValueError(f"not a redis+sentinel:// URL: {url!r}")
        hosts = parts.netloc.rpartition("@")[2]
        self.sentinels: list[tuple[str, int]] = []
        for address in hosts.split(","):
            host, colon, port = address.rpartition(":")
            if not colon or not host or not port.isdigit():
                raise ValueError(f"Sentinel address {address!r} is not host:port in {url!r}")
            self.sentinels.append((host.strip("[]"), int(port)))
        path = [unquote(p) for p in parts.path.split("/")[1:] if p]
        if not 1 <= len(path) <= 2:
            raise ValueError(f"expected /<service>/<db> after the Sentinels in {url!r}")
        self.service = path[0]
        if len(path) == 2 and not path[1].isdigit():
            raise ValueError(f"database {path[1]!r} is not a number in {url!r}")
        self.db = int(path[1]) if len(path) == 2 else 0
        userinfo = parts.netloc.rpartition("@")[0]
        user, _, password = userinfo.partition(":")
        self.username = unquote(user) or None
        self.password = unquote(password) or None
        query = parse_qs(parts.query)
        self.sentinel_password = query.get("sentinel_password", [None])[0]


class RedisSentinelBackend(RedisBackend):
    """:class:`~megaphone.backends.redis.RedisBackend` on the master Sentinel names; see the
    module docstring."""

    def _connection_pool(self, url: str) -> BlockingConnectionPool:
        try:
            parsed = SentinelURL(url)
        except ValueError as exc:
            raise ValueError(f"invalid Redis Sentinel URL {url!r}: {exc}") from None
        self._service = parsed.service
        sentinel_options: dict[str, Any] = {
            "socket_timeout": SOCKET_TIMEOUT,
            "socket_connect_timeout": CONNECT_TIMEOUT,
        }
        if parsed.sentinel_password:
            sentinel_options["password"] = parsed.sentinel_password
        self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
            parsed.sentinels, sentinel_kwargs=sentinel_options
        )
        return SentinelBlockingPool(  # type: ignore[no-untyped-call]
            parsed.service,
            self._sentinel,
            db=parsed.db,
            username=parsed.username,
            password=parsed.password,
            **POOL_OPTIONS,
        )

    def _where(self) -> str:
        return f"Redis master of {self._service!r} (Sentinel)"

    async def stop(self) -> None:
        await super().stop()
        for sentinel in self._sentinel.sentinels:
            await sentinel.aclose()
