"""The uvicorn settings Megaphone serves under: ``manage.py serve`` and ``manage.py runserver``.

The WebSocket settings follow Megaphone's: the server refuses messages over ``MAX_MESSAGE_SIZE``
with close 1009 before buffering them, and permessage-deflate is off (it costs CPU per client and
memory per connection, and compressing attacker-chosen data next to secrets is a risk). The
protocol classes are Megaphone's where the installed uvicorn has the internals they rely on, and
uvicorn's stock ones otherwise (:mod:`megaphone.server.uvicorn_contract`).
"""

from __future__ import annotations

from typing import Any

from megaphone.conf import get_config
from megaphone.server.uvicorn_contract import NATIVE, native_problems, protocols


class NativeUnavailable(Exception):
    """The native transport cannot run on the installed uvicorn (what it misses)."""


def uvicorn_options(*, native: bool = False) -> dict[str, Any]:
    """Keyword arguments for ``uvicorn.run()`` / ``uvicorn.Config()``, beyond the application,
    the address and the logging. ``native``: Megaphone's endpoints on the native transport
    (:mod:`megaphone.server.native`); :class:`NativeUnavailable` when the installed uvicorn
    lacks what it needs."""
    config = get_config()
    chosen = protocols()
    if native:
        missing = native_problems()
        if missing:
            raise NativeUnavailable("; ".join(missing))
        chosen["http"] = NATIVE.ours
    return {
        **chosen,
        "lifespan": "off",
        "ws_max_size": config.MAX_MESSAGE_SIZE,
        "ws_per_message_deflate": False,
        "ws_ping_interval": config.PING_INTERVAL,
        "ws_ping_timeout": config.PING_TIMEOUT,
    }
