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
    "publish": "megaphone.publishing",
    "apublish": "megaphone.publishing",
    "PublishError": "megaphone.publishing",
    "InvalidMessage": "megaphone.publishing",
    "MessageTooLarge": "megaphone.publishing",
    "PublishUnavailable": "megaphone.publishing",
    "NoServerHere": "megaphone.publishing",
    "BackendUnavailable": "megaphone.backends",
    "Message": "megaphone.message",
    "broadcast_model": "megaphone.model_broadcast",
}

__all__ = ["__version__", *_LAZY]

if TYPE_CHECKING:  # the names above, for type checkers and IDEs
    from .backends import BackendUnavailable as BackendUnavailable
    from .message import Message as Message
    from .model_broadcast import broadcast_model as broadcast_model
    from .publishing import InvalidMessage as InvalidMessage
    from .publishing import MessageTooLarge as MessageTooLarge
    from .publishing import NoServerHere as NoServerHere
    from .publishing import PublishError as PublishError
    from .publishing import PublishUnavailable as PublishUnavailable
    from .publishing import apublish as apublish
    from .publishing import publish as publish


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
