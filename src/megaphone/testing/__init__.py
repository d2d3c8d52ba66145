"""Helpers for the tests of projects that use Megaphone (as ``channels.testing`` is for Channels).

An entry point layer: it may import every other layer. Nothing here runs unless a test uses it;
the pytest plugin (:mod:`megaphone.testing.plugin`, registered under the ``pytest11`` entry
point) only declares fixtures.

* :class:`ProtocolCommunicator`: a client of the JSON protocol endpoint (``/ws/connect/``) of an
  ASGI application, in-process: requests matched to their reply by id, ``subscribe``,
  ``publish``, ``wait_for_message``.
* :class:`RawCommunicator`: a client of the raw endpoint (``/ws/broadcast/<topic>/``).
* :func:`wait_until` and :class:`Signal`: waits that wake on an event, each bounded by a timeout
  scaled by ``MEGAPHONE_TEST_TIMEOUT_FACTOR``; no polling sleeps.
* :func:`memory_node`: a started node on the in-memory backend, the running loop's own, stopped
  and forgotten on exit.
* :func:`unique`: a fresh topic name, so that tests sharing a node never see each other's traffic.
"""

from megaphone.testing.communicator import (
    ProtocolCommunicator,
    ProtocolError,
    RawCommunicator,
)
from megaphone.testing.node import memory_node
from megaphone.testing.waits import Signal, scaled, unique, wait_until

__all__ = [
    "ProtocolCommunicator",
    "ProtocolError",
    "RawCommunicator",
    "Signal",
    "memory_node",
    "scaled",
    "unique",
    "wait_until",
]
