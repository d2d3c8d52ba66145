"""The transactional outbox: messages published inside a transaction, in the app's database.

``megaphone.publish()`` called inside ``transaction.atomic()`` (or a view under
``ATOMIC_REQUESTS``) writes a :class:`~megaphone.models.PendingMessage` row in that transaction
(:func:`write`), so the message exists if and only if the transaction commits. After the commit,
the process relays it to the backend and deletes the row; a row still there (the process died
between the commit and the relay, or the backend refused it) is relayed by the serving workers
once it is :data:`~megaphone.conf.Config.TRANSACTION_RELAY_INTERVAL` old (:func:`due`).

Exactly once: every row has a ``msg_id`` and the backends accept a ``msg_id`` once per topic
while the topic's history holds it (:mod:`megaphone.backends.base`), so a row relayed twice (by
two workers at once, or relayed and not deleted) reaches subscribers once. A row that waited
longer than the topic's history keeps messages (``history_ttl``), or on a topic that keeps no
history (``$`` topics, ``history_size: 0``), could be delivered twice.

Every function here is synchronous ORM code: async callers go through ``sync_to_async``.
"""

from __future__ import annotations

import time
import uuid

from django.db import router, transaction

from megaphone.models import PendingMessage


def database() -> str:
    """The database alias the outbox is written to (Django's routers decide)."""
    alias: str = router.db_for_write(PendingMessage)
    return alias


def in_transaction(using: str | None = None) -> bool:
    """Whether this thread is inside an atomic block on the outbox's database."""
    return bool(transaction.get_connection(using or database()).in_atomic_block)


def new_msg_id() -> str:
    return f"tx-{uuid.uuid4().hex}"


def write(topic: str, payload: str | bytes, is_json: bool, msg_id: str) -> PendingMessage:
    """Store a message in the current transaction."""
    text, data = (payload, None) if isinstance(payload, str) else (None, payload)
    return PendingMessage.objects.using(database()).create(
        topic=topic, text=text, data=data, json=is_json, msg_id=msg_id, created=time.time()
    )


def payload_of(row: PendingMessage) -> str | bytes:
    return row.text if row.text is not None else bytes(row.data or b"")


def due(older_than: float, limit: int = 100) -> list[PendingMessage]:
    """Committed rows written before ``older_than`` (seconds since the epoch), oldest first."""
    rows = PendingMessage.objects.using(database()).filter(created__lt=older_than)
    return list(rows.order_by("created", "pk")[:limit])


def done(pk: int) -> None:
    """Forget a relayed row."""
    PendingMessage.objects.using(database()).filter(pk=pk).delete()
