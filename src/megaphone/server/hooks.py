"""Hooks as Django signals: what the project's code may say about a client's message.

:data:`client_publish` is sent before a message a WebSocket client sent (the raw endpoint's
frames, the protocol's ``publish``) is published, once the policy allowed it. Its receivers are
called with ``topic``, ``data`` (what the client sent: the text, the bytes, or, for a protocol
client's JSON value, that value), ``user`` (the connection's principal) and ``endpoint``
(``"raw"`` or ``"protocol"``). A receiver may:

* return None: the message goes on as it is;
* return a replacement (``str``: text, ``bytes``: binary, anything else: its JSON, as
  :func:`megaphone.publish` takes it); the last receiver that returns one wins;
* raise :class:`PublishRejected`: nothing is published, and the client is told: the protocol
  client gets an ``error`` frame with the rejection's ``code`` and ``message``, the raw client
  is closed with 4403 (its close frames carry no code of ours).

Receivers may be sync (run in a worker thread, off the event loop: they may use the ORM) or
async (awaited). A receiver that raises anything else refuses the message too (code
``rejected``), and the error is logged with its traceback. With no receiver connected, nothing is
sent and publishing costs nothing more. Receivers run once per message, in the worker the
client is connected to::

    from django.dispatch import receiver
    from megaphone.server.hooks import PublishRejected, client_publish

    @receiver(client_publish)
    def moderate(sender, topic, data, user, endpoint, **kwargs):
        if isinstance(data, str) and "spam" in data:
            raise PublishRejected("spam", "no spam here")
        if topic.startswith("chat."):
            return {"text": data, "by": getattr(user, "username", None)}
"""

from __future__ import annotations

import json
import re
from typing import Any

from django.dispatch import Signal

from megaphone.core.logs import get_logger
from megaphone.engine.publishing import InvalidMessage, prepare

logger = get_logger(__name__)

#: Sent before a client's message is published; see the module docstring.
client_publish = Signal()

_CODE = re.compile(r"[a-z][a-z0-9_]{0,39}")


class PublishRejected(Exception):
    """Raised by a :data:`client_publish` receiver: the message is not published and the client
    gets ``code`` (lowercase letters, digits and ``_``, at most 40) and ``message``."""

    def __init__(self, code: str = "rejected", message: str = "rejected by the server") -> None:
        if not isinstance(code, str) or not _CODE.fullmatch(code):
            raise ValueError(f"a rejection code is [a-z][a-z0-9_]* of at most 40, not {code!r}")
        super().__init__(message)
        self.code = code
        self.message = str(message)


async def screen(
    topic: str, payload: str | bytes, is_json: bool, user: Any, endpoint: str
) -> tuple[str | bytes, bool]:
    """The message to publish after :data:`client_publish`'s receivers: ``(payload, is_json)``,
    or :class:`PublishRejected`."""
    if not client_publish.has_listeners():
        return payload, is_json
    data = json.loads(payload) if is_json else payload
    try:
        responses = await client_publish.asend(
            sender=endpoint, topic=topic, data=data, user=user, endpoint=endpoint
        )
    except PublishRejected:
        raise
    except Exception:
        logger.exception("a client_publish receiver failed on %s: message refused", topic)
        raise PublishRejected() from None
    replacements = [response for _, response in responses if response is not None]
    if not replacements:
        return payload, is_json
    try:
        _, payload, is_json = prepare(topic, replacements[-1])
    except InvalidMessage as exc:
        logger.error("a client_publish receiver's replacement on %s is invalid: %s", topic, exc)
        raise PublishRejected(exc.code or "rejected", str(exc)) from None
    return payload, is_json
