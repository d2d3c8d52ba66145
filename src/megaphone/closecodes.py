"""WebSocket close codes Megaphone sends, and what each means. Documented in docs/protocol.md.

1000-1015 are RFC 6455's; 4000-4999 are ours, numbered after the nearest HTTP status so they are
easy to remember. A client should reconnect (with backoff) after 1001, 1011, 1012, 1013 and 4408,
and should not retry 1008, 1009, 4400, 4401 and 4403 without changing something first. What
megaphone.js does after each is its ``CLOSE_CODES`` table (docs/protocol.md, docs/clients.md); a
test keeps that table's codes and names equal to :class:`CloseCode`'s.
"""

from enum import IntEnum


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
    RATE_LIMITED = 4429  # published (raw endpoint), or subscribed past rate_limited, too fast
