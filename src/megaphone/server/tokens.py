"""Short-lived signed connection tokens, for clients that have no Django session.

A server-side view (or any Django code) issues a token for a user with :func:`issue_token`; the
client connects with ``?token=<token>``. The token is signed with the project's ``SECRET_KEY``
(:mod:`django.core.signing`, salted for Megaphone) and carries the user's primary key and its
issue time; it is valid for ``TOKEN_TTL`` seconds. A connection authenticated by a token is
closed with 4401 when the token expires, so the client fetches a new one and reconnects.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.core import signing

from megaphone.conf import get_config
from megaphone.core.topics import validate_topic

_SALT = "megaphone.connection-token"


class InvalidToken(ValueError):
    """A token that is malformed, forged or expired; the message says which (never the token)."""


@dataclass(frozen=True, slots=True)
class TokenClaims:
    user_id: str
    expires_at: float
    #: Topics a protocol connection of this token is subscribed to by the server at connect.
    subscriptions: tuple[str, ...] = ()


def issue_token(user: Any, ttl: float | None = None, *, subscriptions: Iterable[str] = ()) -> str:
    """A token that authenticates ``user`` for ``ttl`` seconds (default ``TOKEN_TTL``).

    ``subscriptions``: topics a ``/ws/connect/`` connection with this token is subscribed to by
    the server at connect (``subscribed`` frames), as the policy allows them; each is validated
    now (:class:`~megaphone.core.topics.InvalidTopic`)."""
    ttl = get_config().TOKEN_TTL if ttl is None else ttl
    claims: dict[str, Any] = {"u": str(user.pk), "e": time.time() + ttl}
    topics = [validate_topic(topic) for topic in subscriptions]
    if topics:
        claims["s"] = topics
    return signing.dumps(claims, salt=_SALT, compress=True)


def verify_token(token: str) -> TokenClaims:
    """The claims of a valid token; raise :class:`InvalidToken` otherwise."""
    try:
        claims = signing.loads(token, salt=_SALT)
    except signing.BadSignature:
        raise InvalidToken("bad signature") from None
    if not isinstance(claims, dict) or not {"u", "e"} <= claims.keys():
        raise InvalidToken("malformed claims")
    if claims["e"] <= time.time():
        raise InvalidToken("expired")
    topics = claims.get("s", [])
    if not isinstance(topics, list) or not all(isinstance(topic, str) for topic in topics):
        raise InvalidToken("malformed claims")
    return TokenClaims(str(claims["u"]), float(claims["e"]), tuple(topics))
