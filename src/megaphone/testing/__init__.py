"""Helpers for the tests of projects that use Megaphone (as ``channels.testing`` is for Channels).

An entry point layer: it may import every other layer. Nothing here runs unless a test uses it;
the pytest plugin (:mod:`megaphone.testing.plugin`, registered under the ``pytest11`` entry
point) only declares fixtures.

* :class:`ProtocolCommunicator`: a client of the JSON protocol endpoint (``/ws/connect/``) of an
  ASGI application, in-process: requests matched to their reply by id, ``subscribe``,
  ``publish``, ``wait_for_message``.
* :class:`RawCommunicator`: a client of the raw endpoint (``/ws/broadcast/<topic>/``).
* :func:`wait_until`, :class:`Signal` and :class:`Collected`: waits that wake on an event, each
  bounded by a timeout scaled by ``MEGAPHONE_TEST_TIMEOUT_FACTOR``; no polling sleeps.
* :func:`memory_node`: a started node on the in-memory backend, the running loop's own, stopped
  and forgotten on exit.
* :func:`unique`: a fresh topic name, so that tests sharing a node never see each other's traffic.
"""

from importlib import import_module
from typing import TYPE_CHECKING, Any

#: Public name -> the module that defines it. Imported on first use: the pytest plugin lives in
#: this package, and pytest loads it in runs that never touch Megaphone (nor Django).
_LAZY = {
    "ProtocolCommunicator": "megaphone.testing.communicator",
    "ProtocolError": "megaphone.testing.communicator",
    "RawCommunicator": "megaphone.testing.communicator",
    "memory_node": "megaphone.testing.node",
    "Collected": "megaphone.testing.waits",
    "Signal": "megaphone.testing.waits",
    "scaled": "megaphone.testing.waits",
    "unique": "megaphone.testing.waits",
    "wait_until": "megaphone.testing.waits",
}

__all__ = sorted(_LAZY)

if TYPE_CHECKING:  # the names above, for type checkers and IDEs
    from megaphone.testing.communicator import ProtocolCommunicator as ProtocolCommunicator
    from megaphone.testing.communicator import ProtocolError as ProtocolError
    from megaphone.testing.communicator import RawCommunicator as RawCommunicator
    from megaphone.testing.node import memory_node as memory_node
    from megaphone.testing.waits import Collected as Collected
    from megaphone.testing.waits import Signal as Signal
    from megaphone.testing.waits import scaled as scaled
    from megaphone.testing.waits import unique as unique
    from megaphone.testing.waits import wait_until as wait_until


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'megaphone.testing' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return __all__
