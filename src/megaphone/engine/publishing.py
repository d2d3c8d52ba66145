"""Publishing from anywhere in Django: :func:`publish` for sync code, :func:`apublish` for async.

``publish(topic, data)`` works from views, signal handlers, Celery tasks, management commands and
the shell: any thread that is not running an event loop. It hands the message to **one**
process-wide background event loop owned by Megaphone (:mod:`megaphone.engine.background`: a
daemon thread, started on first use and reused by every caller, restarted after a ``fork``),
which holds one backend for the process, so the number of backend connections does not grow
with the number of threads or calls. It waits up to ``PUBLISH_TIMEOUT`` seconds for the backend
to accept the message and returns it.

``await apublish(topic, data)`` publishes through the node of the running event loop (the one the
server's WebSocket connections use).

What is sent, by the type of ``data``:

* ``str``: a text message, exactly that text;
* ``bytes`` (or ``bytearray``, ``memoryview``): a binary message, exactly those bytes;
* anything else: its JSON text (compact, UTF-8, ``DjangoJSONEncoder``: datetimes, decimals and
  UUIDs are fine), sent as a text message marked as JSON, so clients of the protocol endpoint
  receive the value itself, as if a protocol client had published it.

Text must be valid Unicode: a ``str`` (or a string inside a JSON value) or a ``msg_id`` holding a
lone surrogate (``"\\ud800"``, or undecodable bytes read with ``surrogateescape``) raises
:class:`InvalidMessage` before anything is sent.

Both return the :class:`~megaphone.core.message.Message` with its ``offset`` and ``epoch`` once the
backend has accepted it, or raise a :class:`PublishError`; they never pretend. On the in-memory
backend, in a process that serves no clients (``manage.py shell``, a Celery worker, a script: no
WebSocket endpoint of Megaphone's was built here), both raise :class:`NoServerHere`, since no
server and no client shares this process's memory: use the Redis backend there.

**Inside a transaction**, ``publish()`` is transactional: called inside ``transaction.atomic()``
(or a view under ``ATOMIC_REQUESTS``) it writes the message in the same transaction (the outbox,
:mod:`megaphone.backends.transactional`) and returns a :class:`Pending`; the message is relayed
to the backend after the commit (``transaction.on_commit``), by the serving workers if this
process dies first, exactly once (through its ``msg_id``). A rollback publishes nothing, and
nothing reaches history. Outside a transaction, ``publish()`` publishes at once, as above.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from functools import partial
from typing import Any

from django.db import transaction

from megaphone.backends import BackendUnavailable
from megaphone.conf import get_config
from megaphone.core.decoding import InvalidText, check_text, utf8_size
from megaphone.core.logs import get_logger
from megaphone.core.message import Message, msg_id_problem
from megaphone.core.topics import InvalidTopic, validate_topic
from megaphone.engine.background import background
from megaphone.engine.node import Node, get_node

logger = get_logger(__name__)

__all__ = [
    "InvalidMessage",
    "MessageTooLarge",
    "NoServerHere",
    "Pending",
    "PublishError",
    "PublishUnavailable",
    "apublish",
    "encode_data",
    "publish",
]


class PublishError(Exception):
    """Nothing was published; the subclass and the message say why."""

    #: A stable, machine-readable reason (the HTTP API's error code).
    code = "publish_failed"


class InvalidMessage(PublishError, ValueError):
    """The topic name or the data cannot be published (fix the call, do not retry)."""

    code = "invalid_message"

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code


class MessageTooLarge(InvalidMessage):
    """The encoded message is larger than ``MAX_MESSAGE_SIZE``."""

    code = "message_too_large"


class PublishUnavailable(PublishError, BackendUnavailable):
    """The backend did not accept the message (unreachable, or no answer within the timeout).

    After a timeout the message may still be published later; retrying may then duplicate it.
    """

    code = "backend_unavailable"

    @classmethod
    def timed_out(cls, topic: str, timeout: float) -> PublishUnavailable:
        return cls(f"the backend did not accept the message on {topic!r} within {timeout} s")


class NoServerHere(PublishUnavailable):
    """The in-memory backend, in a process that serves no clients: a message published here
    would reach no one. Publishing across processes needs the Redis backend."""

    @classmethod
    def for_topic(cls, topic: str) -> NoServerHere:
        return cls(
            f"cannot publish on {topic!r}: the in-memory backend does not cross processes, and "
            "this process serves no clients (it built none of Megaphone's WebSocket endpoints), "
            "so no client would receive it. Publish from the server's process, or use the Redis "
            "backend (or the PostgreSQL one) in the server and here: "
            "REDIS_URL=redis://127.0.0.1:6379/0, MEGAPHONE_BACKEND=postgres://user@host:5432/db, "
            "or MEGAPHONE['BACKEND'] (docs/settings.md)."
        )


_serving = False


def mark_serving() -> None:
    """Record that this process serves clients (building Megaphone's WebSocket endpoints calls
    it), so that :func:`publish` on the in-memory backend reaches them."""
    global _serving
    _serving = True


def serves_clients() -> bool:
    """Whether this process built Megaphone's WebSocket endpoints (or was forked from one that
    did, as the workers of a server that preloads the application are)."""
    return _serving


def encode_data(data: Any) -> tuple[str | bytes, bool]:
    """``(payload, is_json)`` for ``data``, following the rules in the module docstring."""
    if isinstance(data, str):
        return data, False
    if isinstance(data, bytes | bytearray | memoryview):
        return bytes(data), False
    from django.core.serializers.json import DjangoJSONEncoder

    try:
        text = json.dumps(
            data, cls=DjangoJSONEncoder, separators=(",", ":"), ensure_ascii=False, allow_nan=False
        )
    except (TypeError, ValueError) as exc:
        raise InvalidMessage(f"data cannot be encoded as JSON: {exc}", "invalid_data") from exc
    return text, True


def prepare(topic: str, data: Any, msg_id: str | None = None) -> tuple[str, str | bytes, bool]:
    """Validate ``topic`` and ``msg_id`` and encode ``data``; raise :class:`InvalidMessage` if
    one is bad: codes ``invalid_topic``, ``invalid_msg_id`` (also for a ``msg_id`` that is not
    valid Unicode), ``invalid_data`` (data JSON cannot encode, or text, a JSON string
    included, that is not valid Unicode: a lone surrogate), ``message_too_large``."""
    try:
        validate_topic(topic)
    except InvalidTopic as exc:
        raise InvalidMessage(str(exc), "invalid_topic") from exc
    if msg_id is not None:
        problem = msg_id_problem(msg_id)
        if problem is not None:
            raise InvalidMessage(problem, "invalid_msg_id")
        try:
            check_text(msg_id, "msg_id")
        except InvalidText as exc:
            raise InvalidMessage(str(exc), "invalid_msg_id") from None
    payload, is_json = encode_data(data)
    try:
        size = utf8_size(payload)
    except InvalidText as exc:
        raise InvalidMessage(f"data is {exc}", "invalid_data") from None
    limit = get_config().MAX_MESSAGE_SIZE
    if size > limit:
        raise MessageTooLarge(f"message of {size} bytes on {topic!r}: the limit is {limit} bytes")
    return topic, payload, is_json


async def _publish_on(
    node: Node, topic: str, payload: str | bytes, is_json: bool, msg_id: str | None
) -> Message:
    if not node.backend.crosses_processes and not serves_clients():
        raise NoServerHere.for_topic(topic)
    try:
        return await node.publish(topic, payload, json=is_json, msg_id=msg_id)
    except PublishError:
        raise
    except BackendUnavailable as exc:
        raise PublishUnavailable(f"publish on {topic!r} failed: {exc}") from exc
    except OSError as exc:
        raise PublishUnavailable(f"publish on {topic!r} failed: {exc!r}") from exc


async def apublish(
    topic: str, data: Any, *, msg_id: str | None = None, timeout: float | None = None
) -> Message:
    """Publish ``data`` on ``topic`` from async code; return the accepted message.

    ``msg_id`` makes the call idempotent: if ``topic`` already accepted a message with that id
    (and still has it in history), that message is returned and nothing is published again, so
    a caller may retry after a timeout without duplicating.

    Raises :class:`InvalidMessage` (bad topic or data, :class:`MessageTooLarge`) or
    :class:`PublishUnavailable` (backend down, or no answer within ``timeout`` seconds, by default
    ``PUBLISH_TIMEOUT``).
    """
    topic, payload, is_json = prepare(topic, data, msg_id)
    return await apublish_prepared(topic, payload, is_json, msg_id, timeout)


async def apublish_prepared(
    topic: str,
    payload: str | bytes,
    is_json: bool,
    msg_id: str | None = None,
    timeout: float | None = None,
) -> Message:
    """:func:`apublish` of what :func:`prepare` returned."""
    timeout = get_config().PUBLISH_TIMEOUT if timeout is None else timeout
    try:
        async with asyncio.timeout(timeout):
            if asyncio.get_running_loop() is background.current_loop():
                node = await background.node()
            else:
                node = await get_node()
            return await _publish_on(node, topic, payload, is_json, msg_id)
    except TimeoutError:
        raise PublishUnavailable.timed_out(topic, timeout) from None
    except PublishError:
        raise
    except (BackendUnavailable, OSError) as exc:
        raise PublishUnavailable(f"the backend cannot be reached: {exc}") from exc


@dataclass(frozen=True, slots=True)
class Pending:
    """What :func:`publish` returns inside a transaction: the message is written with it and
    will be published once it commits, with this ``msg_id``."""

    topic: str
    msg_id: str


def publish(
    topic: str, data: Any, *, msg_id: str | None = None, timeout: float | None = None
) -> Message | Pending:
    """Publish ``data`` on ``topic`` from sync code; block until the backend accepts it.

    Inside a transaction, write it in the transaction instead and publish it once the
    transaction commits (see the module docstring): return a :class:`Pending`.

    Raises :class:`RuntimeError` when called from a thread running an event loop (use
    :func:`apublish` there), otherwise as :func:`apublish` does.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        pass
    else:
        raise RuntimeError(
            "megaphone.publish() was called from async code (this thread runs an event loop), "
            "where it would block the loop: use `await megaphone.apublish(topic, data)` instead."
        )
    topic, payload, is_json = prepare(topic, data, msg_id)
    from megaphone.backends import transactional

    if transactional.in_transaction():
        return publish_on_commit(topic, payload, is_json, msg_id, timeout)
    return publish_prepared(topic, payload, is_json, msg_id, timeout)


def publish_on_commit(
    topic: str,
    payload: str | bytes,
    is_json: bool,
    msg_id: str | None = None,
    timeout: float | None = None,
) -> Pending:
    """Write what :func:`prepare` returned in the current transaction, and publish it once the
    transaction commits (see the module docstring)."""
    from megaphone.backends import transactional

    msg_id = msg_id or transactional.new_msg_id()
    row = transactional.write(topic, payload, is_json, msg_id)
    relay = partial(_relay_committed, row.pk, topic, payload, is_json, msg_id, timeout)
    transaction.on_commit(relay, using=transactional.database())
    return Pending(topic, msg_id)


def _relay_committed(
    pk: int, topic: str, payload: str | bytes, is_json: bool, msg_id: str, timeout: float | None
) -> None:
    """After the commit: publish, then forget the row. A message the backend did not take stays
    in the outbox, for the workers' relay."""
    from megaphone.backends import transactional

    try:
        publish_prepared(topic, payload, is_json, msg_id, timeout)
    except NoServerHere as exc:  # what the relay is for: a process that reaches no server
        logger.info("message on %s committed, left to the serving workers' relay: %s", topic, exc)
        return
    except PublishError as exc:
        logger.warning("message on %s committed, left to the workers' relay: %s", topic, exc)
        return
    transactional.done(pk)


def publish_prepared(
    topic: str,
    payload: str | bytes,
    is_json: bool,
    msg_id: str | None = None,
    timeout: float | None = None,
) -> Message:
    """:func:`publish` of what :func:`prepare` returned (no running loop in this thread)."""
    timeout = get_config().PUBLISH_TIMEOUT if timeout is None else timeout
    future = background.submit(_publish_in_background(topic, payload, is_json, msg_id))
    try:
        return future.result(timeout)
    except TimeoutError:
        future.cancel()
        raise PublishUnavailable.timed_out(topic, timeout) from None


async def _publish_in_background(
    topic: str, payload: str | bytes, is_json: bool, msg_id: str | None
) -> Message:
    try:
        node = await background.node()
    except (BackendUnavailable, OSError) as exc:
        raise PublishUnavailable(f"the backend cannot be reached: {exc}") from exc
    return await _publish_on(node, topic, payload, is_json, msg_id)


def shutdown(timeout: float = 5.0) -> None:
    """Close the background publisher's backend connections and stop its thread (optional:
    it also happens at interpreter exit)."""
    background.shutdown(timeout)
