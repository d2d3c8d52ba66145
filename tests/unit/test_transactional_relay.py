"""Tier 1: the workers' relay of the transactional outbox publishes a committed row once, however
often it is relayed (two workers at once, or a row relayed and not deleted), and deletes it."""

from __future__ import annotations

import time
from typing import Any

import pytest
from channels.db import database_sync_to_async

from megaphone.backends import transactional
from megaphone.backends.memory import MemoryBackend
from megaphone.core.message import Message
from megaphone.engine.node import Node
from megaphone.engine.relay import relay_due
from megaphone.models import PendingMessage

pytestmark = pytest.mark.django_db(transaction=True)


class Sink:
    def __init__(self) -> None:
        self.messages: list[Message] = []

    def deliver(self, message: Message) -> None:
        self.messages.append(message)


async def test_a_row_relayed_twice_is_delivered_once_and_deleted() -> None:
    node = Node(MemoryBackend("memory://", limits=lambda topic: (100, 600.0)))
    await node.start()
    sink = Sink()
    try:
        await node.subscribe("tx", sink)
        write: Any = database_sync_to_async(transactional.write)
        await write("tx", "once", False, "tx-1")
        assert await relay_due(node, time.time() + 1) == 1
        await write("tx", "once", False, "tx-1")  # as if the first relay had not deleted it
        assert await relay_due(node, time.time() + 1) == 1
        assert [m.payload for m in sink.messages] == ["once"]
        assert await database_sync_to_async(PendingMessage.objects.count)() == 0
        # a row younger than the cut-off is left to its own process
        await write("tx", "young", False, "tx-2")
        assert await relay_due(node, time.time() - 60) == 0
    finally:
        await node.stop()
