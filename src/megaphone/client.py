"""A Python client of Megaphone's JSON protocol (``/ws/connect/``, docs/protocol.md).

For the processes of a Django project that listen or publish over the network: a worker reacting
to events, a service, an integration test, a notebook. It needs only ``websockets`` (no Django, no
settings), so it works against a remote server as well as in tests::

    from megaphone.client import Client

    async with Client("wss://example.com/ws/connect/", token=token) as client:
        news = await client.subscribe("news")
        await client.publish("news", {"hello": "world"})  # Position(topic, offset, epoch)
        async for message in news:
            print(message.offset, message.data)

Guarantees (the same as megaphone.js, docs/clients.md):

* It reconnects by itself, with jittered exponential backoff (:func:`backoff_delay`) that starts
  again from ``min_delay`` only after a connection stayed open for ``stable_period``. Given a list
  of URLs (several machines), each attempt after a failed or lost connection goes to the next
  one, in turn; a connection whose pings go unanswered (``ping_timeout``) counts as lost.
* After a reconnect it resubscribes every topic from the last position it delivered (``since``),
  so the server sends exactly the missed messages, in order, each once; when it cannot
  (``recovered: false``), the subscription says so: its ``on_recovery_failed`` callback, or else
  :class:`RecoveryFailed` raised by its iterator at the place of the gap.
* A publish carries a ``msg_id``; one whose answer was lost to a reconnect is sent again with the
  same ``msg_id``, so the server publishes it once. Every request ends: answered, refused
  (:class:`ClientError` with the error code, or the close code), or ``"timeout"``.
* What it does after each close code is :data:`megaphone.core.closecodes.CLOSE_ACTIONS`, the table
  megaphone.js and the server share.

:class:`SyncClient` wraps it for code that is not async.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import json
import random
import threading
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlencode, urlsplit, urlunsplit

import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidURI

from megaphone.core.closecodes import CloseAction, CloseCode, close_action, close_name
from megaphone.core.logs import get_logger

logger = get_logger(__name__)

__all__ = [
    "Client",
    "ClientError",
    "HistoryPage",
    "Message",
    "Position",
    "PresenceEntry",
    "PresenceEvent",
    "RecoveryFailed",
    "SubscribeResult",
    "Subscription",
    "SyncClient",
    "SyncSubscription",
    "backoff_delay",
]

#: A server URL, or a function (sync or async) called before every connection attempt, e.g. to
#: fetch a fresh token. :class:`Client` also takes a list of them (several servers).
URL = str | Callable[[], str | Awaitable[str]]
State = Literal["connecting", "open", "closed"]
T = TypeVar("T")


class ClientError(Exception):
    """A request or subscription that failed. ``code`` is the error frame's code (``"forbidden"``,
    ``"rate_limited"``...), the close code of a close that refused it (1009, 4429...),
    ``"timeout"`` (no answer in time) or ``"disconnected"`` (not connected, or closed for good)."""

    def __init__(self, code: str | int, message: str = "") -> None:
        super().__init__(message or str(code))
        self.code = code
        self.message = message or str(code)


class RecoveryFailed(ClientError):
    """Messages of a subscription were missed and cannot be sent (``recovered: false``): the
    epoch changed, or they were trimmed from history. Reload your state, then carry on: the
    subscription continues with the live messages after :attr:`result`'s offset."""

    def __init__(self, result: SubscribeResult) -> None:
        super().__init__("recovery_failed", f"messages of {result.topic} were lost")
        self.result = result


@dataclass(frozen=True, slots=True)
class Position:
    """A message's place: the answer to a publish."""

    topic: str
    offset: int
    epoch: str


@dataclass(frozen=True, slots=True)
class Message:
    """A message of a topic. ``data`` is the JSON value published, or ``bytes`` if ``binary``."""

    topic: str
    offset: int
    epoch: str
    data: Any
    binary: bool = False

    @classmethod
    def from_frame(cls, frame: Mapping[str, Any]) -> Message:
        binary = frame.get("binary") is True
        data = base64.b64decode(frame["data"]) if binary else frame["data"]
        return cls(frame["topic"], frame["offset"], frame["epoch"], data, binary)

    def to_frame(self) -> dict[str, Any]:
        """The protocol's ``message`` frame of this message (``binary`` only when true)."""
        frame = {"type": "message", "topic": self.topic, "offset": self.offset}
        frame |= {"epoch": self.epoch, "data": self.data}
        if self.binary:
            frame |= {"data": base64.b64encode(self.data).decode("ascii"), "binary": True}
        return frame


@dataclass(frozen=True, slots=True)
class SubscribeResult:
    """The server's answer to a subscribe. ``recovered`` is None when no ``since`` was sent;
    ``missed`` is how many recovered messages follow."""

    topic: str
    offset: int
    epoch: str
    recovered: bool | None = None
    missed: int = 0


@dataclass(frozen=True, slots=True)
class HistoryPage:
    topic: str
    offset: int
    epoch: str
    complete: bool
    messages: list[Message]


@dataclass(frozen=True, slots=True)
class PresenceEntry:
    client: str
    user: str | None
    info: Any


@dataclass(frozen=True, slots=True)
class PresenceEvent:
    """A ``join`` or ``leave`` on a topic with ``join_leave`` on."""

    type: Literal["join", "leave"]
    topic: str
    entry: PresenceEntry


def backoff_delay(
    attempt: int,
    min_delay: float,
    max_delay: float,
    *,
    longest: bool = False,
    jitter: Callable[[], float] = random.random,
) -> float:
    """The delay before reconnection number ``attempt`` (0 first) of a run of failures:
    ``min(max_delay, min_delay * 2**attempt)`` (``max_delay`` when ``longest``) times a random
    factor from 0.5 to 1, so that clients cut off together do not come back together."""
    base = max_delay if longest else min(max_delay, min_delay * 2 ** min(attempt, 64))
    return base * (0.5 + jitter() / 2)


def _frame_text(frame: Mapping[str, Any]) -> str:
    return json.dumps(frame, ensure_ascii=False, separators=(",", ":"))


_END = object()  # ends a subscription's iterator
_Item = Message | PresenceEvent | ClientError | object


class Subscription:
    """One topic subscription of a :class:`Client`, kept across reconnects.

    :attr:`offset` and :attr:`epoch` are the position of the last message delivered. Messages go
    to ``on_message`` when it was given (then the other events go to their callbacks only, and a
    recovery failure with no ``on_recovery_failed`` is logged), else to the iterator
    (``async for message in sub``), which also yields join/leave :class:`PresenceEvent` s when no
    callback takes them, and raises :class:`RecoveryFailed` at a gap (when no
    ``on_recovery_failed`` callback is given; iterate again to go on). Whichever way it is read,
    the iterator raises :class:`ClientError` when the subscription ends over an error or the
    client stops for good, and stops after :meth:`unsubscribe` or :meth:`Client.close`. What it
    holds is not bounded: a listener must keep reading.
    """

    def __init__(
        self,
        client: Client,
        topic: str,
        *,
        since: Position | None,
        info: Any,
        on_message: Callable[[Message], object] | None,
        on_subscribed: Callable[[SubscribeResult], object] | None,
        on_recovery_failed: Callable[[SubscribeResult], object] | None,
        on_presence: Callable[[PresenceEvent], object] | None,
    ) -> None:
        self.client = client
        self.topic = topic
        self.offset: int | None = since.offset if since else None
        self.epoch: str | None = since.epoch if since else None
        self.info = info
        self.active = True
        self.on_message = on_message
        self.on_subscribed = on_subscribed
        self.on_recovery_failed = on_recovery_failed
        self.on_presence = on_presence
        self._items: asyncio.Queue[_Item] = asyncio.Queue()
        self._first: asyncio.Future[SubscribeResult] = asyncio.get_running_loop().create_future()

    def __aiter__(self) -> AsyncIterator[Message | PresenceEvent]:
        return self

    async def __anext__(self) -> Message | PresenceEvent:
        if not self.active and self._items.empty():
            raise StopAsyncIteration
        item = await self._items.get()
        if item is _END:
            self._items.put_nowait(_END)  # every later call ends too
            raise StopAsyncIteration
        if isinstance(item, ClientError):
            raise item
        assert isinstance(item, Message | PresenceEvent)
        return item

    async def unsubscribe(self) -> None:
        """End the subscription: the iterator stops; nothing of the topic is delivered after."""
        if not self.active:
            return
        self.client._forget(self, _END)
        if self.client.state == "open":
            with contextlib.suppress(ClientError):
                await self.client._request({"op": "unsubscribe", "topic": self.topic})

    async def history(
        self, *, since: int = 0, limit: int = 100, epoch: str | None = None
    ) -> HistoryPage:
        return await self.client.history(self.topic, since=since, limit=limit, epoch=epoch)

    async def presence(self) -> list[PresenceEntry]:
        return await self.client.presence(self.topic)

    # Called by the client, in the order of the frames -----------------------------------------

    def _deliver(self, frame: Mapping[str, Any]) -> None:
        seen = self.offset if frame["epoch"] == self.epoch else None
        if seen is not None and frame["offset"] <= seen:
            return  # already delivered
        message = Message.from_frame(frame)
        self.offset, self.epoch = message.offset, message.epoch
        self._hand(self.on_message, message)

    def _presence(self, frame: Mapping[str, Any]) -> None:
        entry = PresenceEntry(frame["client"], frame.get("user"), frame.get("info"))
        self._hand(self.on_presence, PresenceEvent(frame["type"], self.topic, entry))

    def _subscribed(self, result: SubscribeResult, recovering: bool) -> None:
        self.epoch = result.epoch
        if not result.recovered:  # else the missed messages follow and move the offset
            self.offset = result.offset
        if not self._first.done():
            self._first.set_result(result)
        _call(self.on_subscribed, result, self.topic)
        if recovering and result.recovered is False:
            self._hand(self.on_recovery_failed, RecoveryFailed(result), result)

    def _end(self, item: object) -> None:
        self.active = False
        if not self._first.done():
            ended = ClientError("disconnected", f"the subscription to {self.topic} ended")
            self._first.set_exception(item if isinstance(item, ClientError) else ended)
            self._first.exception()  # retrieved: subscribe() may have stopped waiting for it
        self._items.put_nowait(item)

    def _hand(self, callback: Callable[[Any], object] | None, item: _Item, arg: Any = None) -> None:
        """Give ``item`` to ``callback``; without one, to the iterator, unless the subscription
        is read through ``on_message`` (then nothing reads the iterator: drop it)."""
        if callback is not None:
            _call(callback, item if arg is None else arg, self.topic)
        elif self.on_message is None:
            self._items.put_nowait(item)
        elif isinstance(item, RecoveryFailed):
            logger.warning("%s (and no on_recovery_failed callback)", item.message)


def _call(callback: Callable[[Any], object] | None, arg: Any, topic: str) -> None:
    if callback is None:
        return
    try:
        callback(arg)
    except Exception:
        logger.exception("a callback of %s failed", topic)


@dataclass(eq=False)
class _Request:
    """A request waiting for its answer. ``socket``: the connection it was last sent on (the
    close of that connection may be its refusal)."""

    frame: dict[str, Any]
    text: str
    retry: bool  # sent again after a reconnect (publishes)
    on_answer: Callable[[dict[str, Any] | ClientError], None]
    socket: ClientConnection | None = None
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.size = len(self.text.encode())


class Client:
    """A connection to a Megaphone protocol endpoint that reconnects by itself.

    ``url``: a ``ws://``/``wss://`` URL of ``/ws/connect/``, or a function (sync or async)
    returning one, called before every connection attempt; or a list of them, one per server
    (machines sharing one Redis): the client connects to the first, and each attempt after a
    failed or lost connection goes to the next one, in turn (the backoff still applies). The
    first :meth:`connect` fails only once every server of the list failed once. ``token``: a
    connection token (``megaphone.server.tokens.issue_token``), sent as ``?token=``.
    ``session_cookie``: a Django session key, sent as the ``sessionid`` cookie (``cookie_name``).
    ``headers``: more HTTP headers.

    Times in seconds: ``min_delay``/``max_delay``: the reconnection backoff; ``stable_period``:
    how long a connection must stay open before the backoff starts again from ``min_delay``;
    ``request_timeout``: how long a request other than publish waits for its answer;
    ``publish_timeout``: how long a publish may wait, from the call, across reconnects;
    ``open_timeout``: the WebSocket handshake; ``ping_interval``/``ping_timeout``: the client
    pings the server this often and drops a connection whose ping went unanswered this long (a
    dead network path: a cut link, a machine gone), then reconnects; None turns pinging off.
    ``close_timeout``: how long a closing connection waits for the server's close frame before
    dropping it (so a dead path is left ``ping_timeout + close_timeout`` after its last pong).
    ``on_state(state, code)`` is called on every change of :attr:`state` (``"connecting"``,
    ``"open"``, ``"closed"``).
    """

    def __init__(
        self,
        url: URL | Sequence[URL],
        *,
        token: str | None = None,
        session_cookie: str | None = None,
        cookie_name: str = "sessionid",
        headers: Mapping[str, str] | None = None,
        min_delay: float = 0.5,
        max_delay: float = 10.0,
        stable_period: float = 15.0,
        request_timeout: float = 10.0,
        publish_timeout: float = 10.0,
        open_timeout: float = 10.0,
        ping_interval: float | None = 20.0,
        ping_timeout: float | None = 20.0,
        close_timeout: float | None = 10.0,
        max_frame_size: int | None = 64 * 2**20,
        on_state: Callable[[State, int | None], object] | None = None,
    ) -> None:
        self.url = url
        self._urls: tuple[URL, ...] = (
            (url,) if isinstance(url, str) or callable(url) else tuple(url)
        )
        if not self._urls:
            raise ValueError("Client() needs a URL: the list of URLs is empty")
        self._url_index = 0
        #: The URL of the latest connection attempt (the server it is or was connected to),
        #: without the token; None before the first attempt.
        self.server_url: str | None = None
        self.token = token
        self.headers = dict(headers or {})
        if session_cookie is not None:
            self.headers["Cookie"] = f"{cookie_name}={session_cookie}"
        self.min_delay = min_delay
        self.max_delay = max_delay
        self.stable_period = stable_period
        self.request_timeout = request_timeout
        self.publish_timeout = publish_timeout
        self.open_timeout = open_timeout
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.close_timeout = close_timeout
        self.max_frame_size = max_frame_size
        self.on_state = on_state
        self.state: State = "closed"
        #: The code the connection last closed with (None before any close).
        self.close_code: int | None = None
        #: The connection id the server gave (the ``connected`` frame), None while not open.
        self.client_id: str | None = None
        #: The delay before the coming reconnection, None when none comes.
        self.next_retry_delay: float | None = None
        self._socket: ClientConnection | None = None
        self._requests: dict[int, _Request] = {}
        self._subscriptions: dict[str, Subscription] = {}
        self._next_id = 1
        self._attempt = 0
        self._stopped = False
        self._runner: asyncio.Task[None] | None = None
        self._first: asyncio.Future[None] | None = None

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def connect(self) -> None:
        """Connect and wait for the server's ``connected`` frame. If the first attempt fails,
        raise :class:`ClientError` (``"disconnected"``, or the close code) and stop: a wrong URL
        or credentials fail loudly. Later failures reconnect by themselves. After the client
        stopped (:meth:`close`, or a close code that stops it), connect it again with this."""
        if self._runner is not None and not self._runner.done():
            return
        self._stopped = False
        self._url_index = 0
        self._first = asyncio.get_running_loop().create_future()
        self._runner = asyncio.create_task(self._run(), name="megaphone.client")
        try:
            await self._first
        except ClientError:
            await self.close()
            raise

    async def close(self) -> None:
        """Close for good: pending requests fail with ``"disconnected"``, iterators stop."""
        self._stopped = True
        runner, self._runner = self._runner, None
        if runner is not None and runner is not asyncio.current_task():
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner
        closed = ClientError("disconnected", "the client was closed")
        if self._first is not None and not self._first.done():
            self._first.set_exception(closed)  # connect() was still waiting
        self._fail_all(closed, _END)
        self._set_state("closed", self.close_code)

    async def subscribe(
        self,
        topic: str,
        *,
        since: Position | None = None,
        info: Any = None,
        on_message: Callable[[Message], object] | None = None,
        on_subscribed: Callable[[SubscribeResult], object] | None = None,
        on_recovery_failed: Callable[[SubscribeResult], object] | None = None,
        on_presence: Callable[[PresenceEvent], object] | None = None,
    ) -> Subscription:
        """Subscribe to ``topic`` and wait for the server's answer (the first one: the client
        subscribes again by itself after every reconnect). ``since``: the position to recover
        from; ``info``: this client's presence info. Callbacks (plain functions, called in the
        order of the frames): see :class:`Subscription`. Raise :class:`ClientError` if the
        server refuses (``"forbidden"``...) or does not answer within ``request_timeout``."""
        if topic in self._subscriptions:
            raise ClientError("already_subscribed", topic)
        if self._stopped:
            raise ClientError("disconnected", "the client is closed")
        subscription = Subscription(
            self,
            topic,
            since=since,
            info=info,
            on_message=on_message,
            on_subscribed=on_subscribed,
            on_recovery_failed=on_recovery_failed,
            on_presence=on_presence,
        )
        self._subscriptions[topic] = subscription
        if self.state == "open":
            await self._send_subscribe(subscription)
        try:
            async with asyncio.timeout(self.request_timeout):
                await asyncio.shield(subscription._first)
        except TimeoutError:
            self._forget(subscription, _END)
            raise ClientError("timeout", f"no answer to subscribe {topic}") from None
        except asyncio.CancelledError:
            self._forget(subscription, _END)
            raise
        return subscription

    async def publish(self, topic: str, data: Any, *, msg_id: str | None = None) -> Position:
        """Publish ``data`` (a JSON value; ``bytes`` are sent as binary) on ``topic`` and wait
        until the server accepted it. Sent again after a reconnect with the same ``msg_id``
        (a new UUID by default): published once. Raise :class:`ClientError`: the error frame's
        code when refused, the close code when the server closed over it, ``"timeout"`` when no
        answer came within ``publish_timeout`` of the call (it may still have been published:
        publish again with the same ``msg_id`` to be sure, it counts once), ``"disconnected"``
        when the client closed."""
        frame: dict[str, Any] = {"op": "publish", "topic": topic, "msg_id": msg_id or _new_id()}
        if isinstance(data, bytes | bytearray | memoryview):
            frame["data"] = base64.b64encode(bytes(data)).decode("ascii")
            frame["binary"] = True
        else:
            frame["data"] = data
        result = await self._request(frame, retry=True, seconds=self.publish_timeout)
        return Position(result["topic"], result["offset"], result["epoch"])

    async def history(
        self, topic: str, *, since: int = 0, limit: int = 100, epoch: str | None = None
    ) -> HistoryPage:
        """The messages of ``topic`` after offset ``since`` (at most ``limit``); ``complete`` is
        False when some were trimmed, or ``epoch`` is not the topic's."""
        frame: dict[str, Any] = {"op": "history", "topic": topic, "since": since, "limit": limit}
        if epoch is not None:
            frame["epoch"] = epoch
        result = await self._request(frame)
        messages = [Message.from_frame(m) for m in result["messages"]]
        return HistoryPage(
            result["topic"], result["offset"], result["epoch"], result["complete"], messages
        )

    async def presence(self, topic: str) -> list[PresenceEntry]:
        """Who is subscribed to ``topic`` (a topic with presence on)."""
        result = await self._request({"op": "presence", "topic": topic})
        return [PresenceEntry(c["client"], c.get("user"), c.get("info")) for c in result["clients"]]

    async def ping(self) -> None:
        await self._request({"op": "ping"})

    # Requests ---------------------------------------------------------------------------------

    async def _request(
        self, frame: dict[str, Any], *, retry: bool = False, seconds: float | None = None
    ) -> dict[str, Any]:
        """Send ``frame`` (with ``retry``: now or once connected, again after every reconnect
        until answered) and wait for its answer, at most ``seconds`` from now."""
        if self._stopped or (self.state != "open" and not retry):
            raise ClientError("disconnected", "not connected")
        answer: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()

        def on_answer(result: dict[str, Any] | ClientError) -> None:
            if answer.done():
                return
            if isinstance(result, ClientError):
                answer.set_exception(result)
            else:
                answer.set_result(result)

        request = self._register(frame, retry, on_answer)
        try:
            async with asyncio.timeout(self.request_timeout if seconds is None else seconds):
                if self.state == "open":
                    await self._send(request)
                return await answer
        except TimeoutError:
            raise ClientError("timeout", f"no answer to {frame['op']}") from None
        finally:  # answered, timed out or cancelled: never sent after this
            self._requests.pop(request.frame["id"], None)

    def _register(
        self,
        frame: dict[str, Any],
        retry: bool,
        on_answer: Callable[[dict[str, Any] | ClientError], None],
    ) -> _Request:
        request_id = self._next_id
        self._next_id += 1
        framed = {**frame, "id": request_id}
        request = _Request(framed, _frame_text(framed), retry, on_answer)
        self._requests[request_id] = request
        return request

    async def _send(self, request: _Request) -> None:
        socket = self._socket
        if socket is None:
            return
        request.socket = socket
        with contextlib.suppress(ConnectionClosed):  # the reader handles the close
            await socket.send(request.text)

    def _answer(self, request: _Request, result: dict[str, Any] | ClientError) -> None:
        self._requests.pop(request.frame["id"], None)
        request.on_answer(result)

    async def _send_subscribe(self, subscription: Subscription) -> None:
        frame: dict[str, Any] = {"op": "subscribe", "topic": subscription.topic}
        if subscription.info is not None:
            frame["info"] = subscription.info
        recovering = subscription.offset is not None and subscription.epoch is not None
        if recovering:
            frame["since"] = {"offset": subscription.offset, "epoch": subscription.epoch}

        def on_answer(result: dict[str, Any] | ClientError) -> None:
            if not subscription.active:
                return
            if isinstance(result, ClientError):
                if result.code != "disconnected":  # else: subscribes again once reconnected
                    self._forget(subscription, result)
                return
            subscription._subscribed(
                SubscribeResult(
                    result["topic"],
                    result["offset"],
                    result["epoch"],
                    result.get("recovered"),
                    result.get("missed", 0),
                ),
                recovering,
            )

        await self._send(self._register(frame, False, on_answer))

    def _forget(self, subscription: Subscription, item: object) -> None:
        if self._subscriptions.get(subscription.topic) is subscription:
            del self._subscriptions[subscription.topic]
        subscription._end(item)

    def _fail_all(self, error: ClientError, end: object) -> None:
        for request in list(self._requests.values()):
            self._answer(request, error)
        for subscription in list(self._subscriptions.values()):
            self._forget(subscription, end)

    # The connection ---------------------------------------------------------------------------

    def _set_state(self, state: State, code: int | None = None) -> None:
        if state == self.state and code is None:
            return
        self.state = state
        if self.on_state is not None:
            try:
                self.on_state(state, code)
            except Exception:
                logger.exception("the on_state callback failed")

    async def _url(self) -> str:
        entry = self._urls[self._url_index]
        url = entry if isinstance(entry, str) else entry()
        if not isinstance(url, str):
            url = await url
        self.server_url = url
        if self.token is None:
            return url
        parts = urlsplit(url)
        query = "&".join(filter(None, [parts.query, urlencode({"token": self.token})]))
        return urlunsplit(parts._replace(query=query))

    async def _run(self) -> None:
        """Connect, read, and reconnect after the backoff, until stopped."""
        while not self._stopped:
            self._set_state("connecting")
            socket, code, opened_at = await self._connection()
            if opened_at is not None and time.monotonic() - opened_at >= self.stable_period:
                self._attempt = 0
            action = close_action(code)
            self._after_close(socket, code, action)
            self._url_index = (self._url_index + 1) % len(self._urls)  # the next server
            first = self._first
            failed_everywhere = self._url_index == 0 or code != CloseCode.ABNORMAL
            if first is not None and not first.done() and failed_everywhere:
                self._stopped = True  # the first attempt failed on every server: say so
                first.set_exception(
                    ClientError(code, f"could not connect ({code} {close_name(code)})")
                )
            if self._stopped:
                self.next_retry_delay = None
                self._set_state("closed", code)
                self._fail_all(ClientError(code, "closed for good"), ClientError(code, "closed"))
                return
            self.next_retry_delay = backoff_delay(
                self._attempt,
                self.min_delay,
                self.max_delay,
                longest=action is CloseAction.SLOW_DOWN,
            )
            self._attempt += 1
            self._set_state("closed", code)
            await asyncio.sleep(self.next_retry_delay)

    async def _connection(self) -> tuple[ClientConnection | None, int, float | None]:
        """One connection, from the handshake to its close: the socket (None if the handshake
        failed), its close code, and when it opened (the ``connected`` frame; None if never)."""
        try:
            url = await self._url()
            socket = await websockets.connect(
                url,
                additional_headers=self.headers,
                open_timeout=self.open_timeout,
                ping_interval=self.ping_interval,
                ping_timeout=self.ping_timeout,
                close_timeout=self.close_timeout,
                max_size=self.max_frame_size,
            )  # reading is prompt: a server outpacing it closes with 4408, and we recover
        except (OSError, InvalidHandshake, InvalidURI, TimeoutError) as exc:
            logger.info("cannot connect: %s", exc)
            return None, CloseCode.ABNORMAL, None
        except asyncio.CancelledError:
            raise
        except Exception:  # a URL function that failed
            logger.exception("could not get the connection URL")
            return None, CloseCode.ABNORMAL, None
        self._socket = socket
        opened_at: float | None = None
        try:
            async for text in socket:
                if isinstance(text, str) and await self._on_frame(text):
                    opened_at = time.monotonic()
        except ConnectionClosed:
            pass
        finally:
            self._socket = None
            self.client_id = None
            if self._stopped:
                await socket.close()
        return socket, socket.close_code or CloseCode.ABNORMAL, opened_at

    async def _on_frame(self, text: str) -> bool:
        """Handle one server frame; True for ``connected``."""
        try:
            return await self._dispatch(json.loads(text))
        except (ValueError, TypeError, KeyError, binascii.Error):
            logger.warning("ignored a frame that is not the protocol's")
            return False

    async def _dispatch(self, frame: dict[str, Any]) -> bool:
        kind = frame["type"]
        if kind == "message":
            if subscription := self._subscriptions.get(frame["topic"]):
                subscription._deliver(frame)
        elif kind in ("reply", "error", "pong"):
            request_id = frame.get("id")
            request = self._requests.get(request_id) if isinstance(request_id, int) else None
            if request is None:
                if kind == "error":
                    logger.warning("server error %s", frame)
            elif kind == "error":
                self._answer(request, ClientError(frame["code"], frame.get("message", "")))
            else:
                self._answer(request, frame.get("result", {}))
        elif kind in ("join", "leave"):
            if subscription := self._subscriptions.get(frame["topic"]):
                subscription._presence(frame)
        elif kind == "unsubscribed":
            if subscription := self._subscriptions.get(frame["topic"]):
                if frame.get("code") == "insufficient_state":  # the server lost our place:
                    await self._send_subscribe(subscription)  # subscribe again from it
                else:  # ended by the server (revoked, or the project's reason): over
                    error = ClientError(frame.get("code", "unsubscribed"), "ended by the server")
                    self._forget(subscription, error)
        elif kind == "connected":
            await self._on_connected(frame)
            return True
        return False

    async def _on_connected(self, frame: Mapping[str, Any]) -> None:
        self.client_id = frame.get("client")
        waiting = [r for r in self._requests.values() if r.retry]  # publishes not answered
        self._set_state("open")
        if self._first is not None and not self._first.done():
            self._first.set_result(None)
        for subscription in list(self._subscriptions.values()):
            await self._send_subscribe(subscription)
        for request in waiting:
            if request.frame["id"] in self._requests:
                await self._send(request)

    def _after_close(self, socket: ClientConnection | None, code: int, action: CloseAction) -> None:
        """Act on a close as CLOSE_ACTIONS says: fail what the server refused, decide whether to
        stop, fail the requests that are not sent again (all but the waiting publishes)."""
        self.close_code = code
        refused = self._refused(socket, code, action)
        reason = f"connection closed ({code} {close_name(code)})"
        for request in refused:
            self._answer(request, ClientError(code, f"refused: {reason}"))
        if action is CloseAction.REAUTHENTICATE and all(isinstance(u, str) for u in self._urls):
            self._stopped = True  # these credentials are over; only a URL function brings new
        if action is CloseAction.REFUSE and not refused:
            self._stopped = True  # the refusal is the connection's own: it would come again
        for request in list(self._requests.values()):
            if not (request.retry and not self._stopped):
                self._answer(request, ClientError("disconnected", reason))

    def _refused(
        self, socket: ClientConnection | None, code: int, action: CloseAction
    ) -> list[_Request]:
        """The requests that ``socket``'s close with ``code`` refused (see CLOSE_ACTIONS)."""
        unanswered = [r for r in self._requests.values() if socket and r.socket is socket]
        if not unanswered:
            return []
        if action is CloseAction.SLOW_DOWN:
            return [r for r in unanswered if r.frame["op"] == "publish"]
        if action is not CloseAction.REFUSE:
            return []
        if code != CloseCode.MESSAGE_TOO_BIG:
            return unanswered
        return [max(unanswered, key=lambda r: r.size)]


def _new_id() -> str:
    return uuid.uuid4().hex


class SyncClient:
    """:class:`Client` for code that is not async: it runs the client on an event loop in a
    thread of its own. Use it as a context manager::

        with SyncClient("ws://127.0.0.1:8000/ws/connect/") as client:
            client.publish("news", "hello")
            for message in client.subscribe("news"):
                ...

    Every method blocks until its answer and raises what the async one raises."""

    def __init__(self, url: URL, **options: Any) -> None:
        self._url = url
        self._options = options
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._client: Client | None = None

    def __enter__(self) -> SyncClient:
        self.connect()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _run(self, coroutine: Awaitable[T]) -> T:
        async def run() -> T:
            return await coroutine

        future: ThreadFuture[T] = asyncio.run_coroutine_threadsafe(run(), self._loop)
        return future.result()

    @property
    def client(self) -> Client:
        assert self._client is not None, "connect() first"
        return self._client

    def connect(self) -> None:
        if self._client is not None:
            return
        self._thread.start()

        async def start() -> Client:
            client = Client(self._url, **self._options)
            await client.connect()
            return client

        try:
            self._client = self._run(start())
        except BaseException:
            self._stop_loop()
            raise

    def close(self) -> None:
        if self._client is not None:
            self._run(self._client.close())
            self._client = None
        self._stop_loop()

    def _stop_loop(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
        self._loop.close()

    def subscribe(self, topic: str, **options: Any) -> SyncSubscription:
        return SyncSubscription(self, self._run(self.client.subscribe(topic, **options)))

    def publish(self, topic: str, data: Any, **options: Any) -> Position:
        return self._run(self.client.publish(topic, data, **options))

    def history(self, topic: str, **options: Any) -> HistoryPage:
        return self._run(self.client.history(topic, **options))

    def presence(self, topic: str) -> list[PresenceEntry]:
        return self._run(self.client.presence(topic))


class SyncSubscription:
    """A :class:`Subscription` read by blocking: iterate, or :meth:`get` with a timeout."""

    def __init__(self, owner: SyncClient, subscription: Subscription) -> None:
        self._owner = owner
        self.subscription = subscription

    def __iter__(self) -> Iterator[Message | PresenceEvent]:
        while True:
            try:
                yield self.get()
            except StopAsyncIteration:
                return

    def get(self, timeout: float | None = None) -> Message | PresenceEvent:
        """The next item; raise TimeoutError after ``timeout`` seconds, StopAsyncIteration when
        the subscription ended, and what the async iterator raises."""

        async def next_item() -> Message | PresenceEvent:
            async with asyncio.timeout(timeout):
                return await anext(self.subscription)

        return self._owner._run(next_item())

    def unsubscribe(self) -> None:
        self._owner._run(self.subscription.unsubscribe())
