"""Megaphone's pytest plugin: fixtures for the tests of projects that use Megaphone.

Registered under the ``pytest11`` entry point, so it loads wherever Megaphone is installed. It
only declares fixtures: a test that asks for none of them runs as if it were not there. The
async fixtures need an asyncio pytest plugin (pytest-asyncio, ``asyncio_mode = "auto"``) and
Django settings (pytest-django), as any test of a Megaphone endpoint does.

* ``megaphone_node``: the running loop's node, on the in-memory backend, fresh for the test.
* ``megaphone_application``: the ASGI application the communicators connect to: the
  ``ASGI_APPLICATION`` setting's, else ``megaphone.asgi.application()``. Override it in a
  ``conftest.py`` to test another.
* ``megaphone_communicator``: a connected :class:`~megaphone.testing.ProtocolCommunicator` on
  that application, over ``megaphone_node``; closed after the test.
* ``megaphone_raw``: a factory of connected :class:`~megaphone.testing.RawCommunicator`
  (``await megaphone_raw("topic")``), each closed after the test.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

import pytest

# Imported by each fixture, not here: pytest loads this module in every run of every project
# where Megaphone is installed, with or without Django settings (or Channels' test extras).
if TYPE_CHECKING:
    from megaphone.engine.node import Node
    from megaphone.testing.communicator import ProtocolCommunicator, RawCommunicator


@pytest.fixture
async def megaphone_node() -> AsyncIterator[Node]:
    from megaphone.testing.node import memory_node

    async with memory_node() as node:
        yield node


@pytest.fixture
def megaphone_application() -> Any:
    from django.conf import settings
    from django.utils.module_loading import import_string

    path = getattr(settings, "ASGI_APPLICATION", None)
    if path:
        return import_string(path)
    from megaphone.asgi import application

    return application()


@pytest.fixture
async def megaphone_communicator(
    megaphone_node: Node, megaphone_application: Any
) -> AsyncIterator[ProtocolCommunicator]:
    from megaphone.testing.communicator import ProtocolCommunicator

    async with ProtocolCommunicator(megaphone_application) as communicator:
        yield communicator


@pytest.fixture
async def megaphone_raw(
    megaphone_node: Node, megaphone_application: Any
) -> AsyncIterator[Callable[[str], Awaitable[RawCommunicator]]]:
    from megaphone.testing.communicator import RawCommunicator

    opened: list[RawCommunicator] = []

    async def connect(topic: str = "broadcast") -> RawCommunicator:
        communicator = RawCommunicator(megaphone_application, topic)
        await communicator.connect()
        opened.append(communicator)
        return communicator

    yield connect
    for communicator in opened:
        await communicator.close()
