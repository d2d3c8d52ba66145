"""Durable topics: offsets, epoch and history in the Django database.

A topic whose options say ``durable: True`` (see :func:`megaphone.conf.topic_options`) is numbered
and stored here instead of in the backend: :func:`append` assigns the next offset inside a
transaction that locks the topic's row (``select_for_update``; on SQLite, which has no row locks,
the unique constraint on ``(topic, offset)`` turns a lost race into a retry), stores the message
and trims the topic's history to its size and TTL. The epoch is created with the topic's row and
never changes while the row exists, so offsets and recovery survive a restart of every process.
The node then fans the numbered message out through the backend (:meth:`Backend.forward`).

Every function here is synchronous ORM code; the node calls them through ``sync_to_async``.
"""

from __future__ import annotations

import secrets
import time

from django.db import IntegrityError, OperationalError, transaction

from .backends.base import HistoryPage
from .message import Message
from .models import DurableMessage, DurableTopic

#: Attempts at appending before giving up when concurrent writers keep winning the race.
ATTEMPTS = 10


def _message(row: DurableMessage, epoch: str) -> Message:
    payload: str | bytes = row.text if row.text is not None else bytes(row.data or b"")
    return Message(row.topic, payload, row.offset, epoch, row.time, json=row.json)


def _topic(name: str, lock: bool) -> DurableTopic:
    queryset = DurableTopic.objects.select_for_update() if lock else DurableTopic.objects
    try:
        return queryset.get(name=name)
    except DurableTopic.DoesNotExist:
        DurableTopic.objects.get_or_create(name=name, defaults={"epoch": secrets.token_hex(4)})
        return queryset.get(name=name)


def _trim(topic: str, offset: int, size: int, ttl: float, now: float) -> None:
    DurableMessage.objects.filter(topic=topic, offset__lte=offset - size).delete()
    DurableMessage.objects.filter(topic=topic, time__lt=now - ttl).delete()


def append(
    topic: str,
    payload: str | bytes,
    *,
    json: bool = False,
    msg_id: str | None = None,
    size: int = 1000,
    ttl: float = 600.0,
) -> tuple[Message, bool]:
    """Number and store a message; return it and whether it is new (False: a known ``msg_id``)."""
    for attempt in range(ATTEMPTS):
        try:
            with transaction.atomic():
                state = _topic(topic, lock=True)
                if msg_id is not None:
                    seen = DurableMessage.objects.filter(topic=topic, msg_id=msg_id).first()
                    if seen is not None:
                        return _message(seen, state.epoch), False
                now = time.time()
                state.offset += 1
                row = DurableMessage.objects.create(
                    topic=topic,
                    offset=state.offset,
                    text=payload if isinstance(payload, str) else None,
                    data=payload if isinstance(payload, bytes) else None,
                    json=json,
                    msg_id=msg_id,
                    time=now,
                )
                DurableTopic.objects.filter(name=topic).update(offset=state.offset)
                _trim(topic, state.offset, size, ttl, now)
                return _message(row, state.epoch), True
        except (IntegrityError, OperationalError):  # a concurrent writer won: read again
            if attempt == ATTEMPTS - 1:
                raise
            time.sleep(0.005 * (attempt + 1))
    raise AssertionError("unreachable")


def history(
    topic: str, since: int = 0, limit: int | None = None, *, size: int = 1000, ttl: float = 600.0
) -> HistoryPage:
    """The same contract as :meth:`Backend.history`, from the database."""
    with transaction.atomic():
        state = _topic(topic, lock=False)
        now = time.time()
        rows = DurableMessage.objects.filter(
            topic=topic, offset__gt=max(since, state.offset - size), time__gte=now - ttl
        ).order_by("offset")
        oldest = rows.values_list("offset", flat=True).first()
        oldest_kept = oldest if oldest is not None else state.offset + 1
        complete = since >= state.offset or oldest_kept == since + 1
        if limit is not None:
            rows = rows[:limit]
        messages = [_message(row, state.epoch) for row in rows]
    return HistoryPage(messages, state.offset, state.epoch, complete)
