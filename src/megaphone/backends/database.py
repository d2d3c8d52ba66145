"""Durable topics' history store: offsets, epoch and history in the Django database.

The ORM code of :class:`~.durable.DatabaseHistory`, the :class:`~.base.HistoryStore` that
:class:`~.durable.DurableTopics` keeps durable topics in (the topics whose options say
``durable: True``, see :func:`megaphone.conf.topic_options`).

:func:`append` assigns the next offset inside a transaction that locks the topic's row
(``select_for_update``; on SQLite, which has no row locks, the unique constraint on ``(topic,
offset)`` turns a lost race into a retry), stores the message and trims the topic's history to
its size and TTL.

Only a publish writes. A topic's row is created by its first publish, never by a subscribe, a
history read or a recovery: a topic without a row answers offset 0 in :func:`initial_epoch`, and
its first publish creates the row in that same epoch. So a client that subscribed before the
first publish (and was told that epoch) receives message 1 in the epoch it knows, as the next
offset, without a gap. The epoch never changes while the row exists, and rows are not deleted
(one small row per published topic), so offsets and recovery survive a restart of every
process, and a topic's offsets never start again under its initial epoch. (Deleting a row by
hand, or restoring an older database, would: clients holding offsets of the old rows could then
be answered from the new ones.) Expired messages are deleted in the background
(:func:`expire`, from :meth:`~.durable.DatabaseHistory.sweep`), not only when the topic is next
published to.

Every function here is synchronous ORM code; :class:`~.durable.DatabaseHistory` runs them in
Django's database thread. Importing this module needs Django's apps to be ready.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable

from django.db import IntegrityError, OperationalError, transaction

from megaphone.backends.base import HistoryPage
from megaphone.core.message import Message
from megaphone.models import DurableMessage, DurableTopic

#: Attempts at appending before giving up when concurrent writers keep winning the race.
ATTEMPTS = 10
#: Durable topics whose expired messages one :func:`expire` call deletes, at most.
EXPIRE_BATCH = 200


def initial_epoch(topic: str) -> str:
    """The epoch of ``topic`` before its first publish, and the one its row is created with:
    the same in every process, computed without touching the database."""
    return hashlib.blake2b(topic.encode(), digest_size=4, person=b"megaphone").hexdigest()


def _message(row: DurableMessage, epoch: str) -> Message:
    payload: str | bytes = row.text if row.text is not None else bytes(row.data or b"")
    return Message(row.topic, payload, row.offset, epoch, row.time, json=row.json)


def _locked_topic(name: str) -> DurableTopic:
    """``name``'s row, locked for the transaction; created (in :func:`initial_epoch`) if new."""
    queryset = DurableTopic.objects.select_for_update()
    try:
        row: DurableTopic = queryset.get(name=name)
    except DurableTopic.DoesNotExist:
        DurableTopic.objects.get_or_create(name=name, defaults={"epoch": initial_epoch(name)})
        row = queryset.get(name=name)
    return row


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
                state = _locked_topic(topic)
                now = time.time()
                if msg_id is not None:
                    # Only a message still in history (not yet deleted by a trim) counts.
                    seen = DurableMessage.objects.filter(
                        topic=topic,
                        msg_id=msg_id,
                        offset__gt=state.offset - size,
                        time__gte=now - ttl,
                    ).first()
                    if seen is not None:
                        return _message(seen, state.epoch), False
                    # An expired one not deleted yet no longer counts: it makes way.
                    DurableMessage.objects.filter(topic=topic, msg_id=msg_id).delete()
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
    """The same contract as :meth:`HistoryStore.history`, from the database; writes nothing (a topic
    never published to answers offset 0 in its :func:`initial_epoch`)."""
    with transaction.atomic():
        state = DurableTopic.objects.filter(name=topic).first()
        if state is None:
            return HistoryPage([], 0, initial_epoch(topic), True)
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


def expire(after: str, limits: Callable[[str], tuple[int, float]]) -> str:
    """Delete the expired messages of the next :data:`EXPIRE_BATCH` durable topics in name
    order after ``after`` (``limits(topic) -> (size, ttl)``); return where the next call starts
    ("" once every topic was seen: the next call starts a new round)."""
    names = list(
        DurableTopic.objects.filter(name__gt=after)
        .order_by("name")
        .values_list("name", flat=True)[:EXPIRE_BATCH]
    )
    by_ttl: dict[float, list[str]] = {}
    for name in names:
        by_ttl.setdefault(limits(name)[1], []).append(name)
    now = time.time()
    for ttl, topics in by_ttl.items():
        DurableMessage.objects.filter(topic__in=topics, time__lt=now - ttl).delete()
    return names[-1] if len(names) == EXPIRE_BATCH else ""
