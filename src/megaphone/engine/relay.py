"""The workers' relay of the transactional outbox (:mod:`megaphone.backends.transactional`).

Every serving worker, every ``TRANSACTION_RELAY_INTERVAL`` seconds, publishes the committed
messages at least that old that are still in the outbox (their process died between the commit
and its own relay, or the backend refused them), each with its ``msg_id``, then deletes them.
Workers relay concurrently without duplicates reaching clients: the backend accepts a ``msg_id``
once per topic (see :mod:`megaphone.backends.transactional` for the bound of that promise).
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from channels.db import database_sync_to_async

from megaphone.backends import BackendUnavailable
from megaphone.core.logs import get_logger

if TYPE_CHECKING:
    from megaphone.engine.node import Node

logger = get_logger(__name__)

#: Rows read at once.
BATCH = 100


async def relay_due(node: Node, older_than: float) -> int:
    """Publish and delete the outbox's rows written before ``older_than``, one batch; how many."""
    from megaphone.backends import transactional

    rows = await database_sync_to_async(transactional.due)(older_than, BATCH)
    for row in rows:
        payload = transactional.payload_of(row)
        await node.publish(row.topic, payload, json=row.json, msg_id=row.msg_id)
        await database_sync_to_async(transactional.done)(row.pk)
    if rows:
        logger.info("relayed %d committed message(s) their process had not", len(rows))
    return len(rows)


async def relay_forever(node: Node, interval: float) -> None:
    """:func:`relay_due` every ``interval`` seconds, for messages at least that old. A failing
    round is logged (once until a round succeeds again) and retried."""
    failing = False
    while True:
        await asyncio.sleep(interval)
        try:
            while await relay_due(node, time.time() - interval) == BATCH:
                pass
            failing = False
        except BackendUnavailable as exc:
            logger.debug("relay: backend unavailable: %s", exc)
        except Exception:
            if not failing:
                logger.exception("relay of committed messages failed; retrying")
            failing = True
