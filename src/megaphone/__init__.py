"""Megaphone: real-time broadcast for Django.

The public API is imported lazily, on first use, so ``import megaphone`` stays cheap and never
imports Django models (it is safe in settings files and before ``django.setup()``)::

    import megaphone

    megaphone.publish("orders", {"id": 17, "status": "paid"})  # sync code
    await megaphone.apublish("orders", "hello")  # async code
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

#: Public name -> the module that defines it.
_LAZY = {
    "publish": "megaphone.engine.publishing",
    "apublish": "megaphone.engine.publishing",
    "PublishError": "megaphone.engine.publishing",
    "InvalidMessage": "megaphone.engine.publishing",
    "MessageTooLarge": "megaphone.engine.publishing",
    "PublishUnavailable": "megaphone.engine.publishing",
    "NoServerHere": "megaphone.engine.publishing",
    "BackendUnavailable": "megaphone.backends",
    "Message": "megaphone.core.message",
    "broadcast_model": "megaphone.contrib.model_broadcast",
    "disconnect_user": "megaphone.server.control",
    "unsubscribe_user": "megaphone.server.control",
    "recheck_user": "megaphone.server.control",
    "adisconnect_user": "megaphone.server.control",
    "aunsubscribe_user": "megaphone.server.control",
    "arecheck_user": "megaphone.server.control",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # the names above, for type checkers and IDEs
    from megaphone.backends import BackendUnavailable as BackendUnavailable
    from megaphone.contrib.model_broadcast import broadcast_model as broadcast_model
    from megaphone.core.message import Message as Message
    from megaphone.engine.publishing import InvalidMessage as InvalidMessage
    from megaphone.engine.publishing import MessageTooLarge as MessageTooLarge
    from megaphone.engine.publishing import NoServerHere as NoServerHere
    from megaphone.engine.publishing import PublishError as PublishError
    from megaphone.engine.publishing import PublishUnavailable as PublishUnavailable
    from megaphone.engine.publishing import apublish as apublish
    from megaphone.engine.publishing import publish as publish
    from megaphone.server.control import adisconnect_user as adisconnect_user
    from megaphone.server.control import arecheck_user as arecheck_user
    from megaphone.server.control import aunsubscribe_user as aunsubscribe_user
    from megaphone.server.control import disconnect_user as disconnect_user
    from megaphone.server.control import recheck_user as recheck_user
    from megaphone.server.control import unsubscribe_user as unsubscribe_user


def __getattr__(name: str) -> Any:
    try:
        module = _LAZY[name]
    except KeyError:
        raise AttributeError(f"module 'megaphone' has no attribute {name!r}") from None
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
