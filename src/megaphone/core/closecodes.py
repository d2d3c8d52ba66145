"""WebSocket close codes Megaphone sends, what each means, and what a client does after each.

Documented in docs/protocol.md ("Close codes"). 1000-1015 are RFC 6455's; 4000-4999 are ours,
numbered after the nearest HTTP status so they are easy to remember.

:data:`CLOSE_ACTIONS` is the one table of what a client does next; the Python client
(:mod:`megaphone.client`) reads it, megaphone.js has the same table as ``CLOSE_CODES``, and a test
(tests/unit/test_js_client.py) keeps the two, :class:`CloseCode` and docs/protocol.md equal.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import IntEnum, StrEnum
from types import MappingProxyType


class CloseCode(IntEnum):
    NORMAL = 1000
    GOING_AWAY = 1001
    ABNORMAL = 1006  # never sent: the code reported for a connection that ended without a close
    INVALID_PAYLOAD = 1007  # a text frame that is not valid UTF-8 / Unicode
    POLICY_VIOLATION = 1008
    MESSAGE_TOO_BIG = 1009  # a message over MAX_MESSAGE_SIZE
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012  # the server is restarting: reconnect and recover
    TRY_AGAIN_LATER = 1013  # the backend is unavailable: reconnect later and recover
    BAD_REQUEST = 4400  # a frame the protocol cannot accept
    UNAUTHORIZED = 4401  # missing, bad or expired credentials
    FORBIDDEN = 4403  # not allowed on this topic
    SLOW_CONSUMER = 4408  # the client fell more than the outbox bound behind
    DISCONNECTED = 4410  # the server ended this user's connections (megaphone.disconnect_user)
    RATE_LIMITED = 4429  # published (raw endpoint), or subscribed past rate_limited, too fast


class CloseAction(StrEnum):
    """What a client does after the server closes its connection (docs/clients.md)."""

    #: A transient failure: reconnect after the backoff, resubscribe with ``since``, send the
    #: waiting publishes again.
    RECONNECT = "reconnect"
    #: The server refused something the client sent: fail the requests to blame with the close
    #: code and never send them again (1009: the largest frame sent and not answered; others:
    #: every frame sent and not answered), then reconnect. With nothing to blame, stop.
    REFUSE = "refuse"
    #: Rate limited: fail the publishes sent and not answered; reconnect after the longest delay.
    SLOW_DOWN = "slow_down"
    #: The credentials are over: stop, unless the client can get new ones (a URL function).
    REAUTHENTICATE = "reauthenticate"


CLOSE_ACTIONS: Mapping[CloseCode, CloseAction] = MappingProxyType(
    {
        CloseCode.NORMAL: CloseAction.RECONNECT,
        CloseCode.GOING_AWAY: CloseAction.RECONNECT,
        CloseCode.ABNORMAL: CloseAction.RECONNECT,
        CloseCode.INVALID_PAYLOAD: CloseAction.REFUSE,
        CloseCode.POLICY_VIOLATION: CloseAction.REFUSE,
        CloseCode.MESSAGE_TOO_BIG: CloseAction.REFUSE,
        CloseCode.INTERNAL_ERROR: CloseAction.RECONNECT,
        CloseCode.SERVICE_RESTART: CloseAction.RECONNECT,
        CloseCode.TRY_AGAIN_LATER: CloseAction.RECONNECT,
        CloseCode.BAD_REQUEST: CloseAction.REFUSE,
        CloseCode.UNAUTHORIZED: CloseAction.REAUTHENTICATE,
        CloseCode.FORBIDDEN: CloseAction.REFUSE,
        CloseCode.SLOW_CONSUMER: CloseAction.RECONNECT,
        CloseCode.DISCONNECTED: CloseAction.REAUTHENTICATE,
        CloseCode.RATE_LIMITED: CloseAction.SLOW_DOWN,
    }
)


def close_action(code: int) -> CloseAction:
    """What a client does after close ``code``: :attr:`CloseAction.RECONNECT` for a code the
    table does not name."""
    try:
        return CLOSE_ACTIONS[CloseCode(code)]
    except ValueError:
        return CloseAction.RECONNECT


def close_name(code: int) -> str:
    """The table's name of ``code`` (``"message_too_big"``), or ``"unknown"``."""
    try:
        return CloseCode(code).name.lower()
    except ValueError:
        return "unknown"
