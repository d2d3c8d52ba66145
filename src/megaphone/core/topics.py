"""Topic names: what a valid one looks like, in one place.

A topic name is 1 to 200 characters from ``A-Z a-z 0-9 _ - . : @ =``, starting with a letter, a
digit or ``_``. Examples: ``broadcast``, ``chat.room-42``, ``user:17``. Names are case-sensitive.

Megaphone's own topics are *internal* (:func:`is_internal`): those starting with ``$`` (join/leave
events, logout notices: no client can name them) and with ``_megaphone.`` (the dashboard's
figures, for staff). Listings of the application's topics leave them out.
"""

from __future__ import annotations

import re

MAX_TOPIC_LENGTH = 200
#: Name prefixes of Megaphone's internal topics.
INTERNAL_PREFIXES = ("$", "_megaphone.")
#: What a topic name looks like (its length aside), as a regular expression that JSON Schema
#: (the OpenAPI document) and Python read alike; :func:`validate_topic` matches it in full.
TOPIC_PATTERN = "^[A-Za-z0-9_][A-Za-z0-9_.:@=-]*$"
_TOPIC = re.compile(TOPIC_PATTERN)


class InvalidTopic(ValueError):
    """A topic name that does not follow the rules above; the message says which rule."""


def validate_topic(name: object) -> str:
    """Return ``name`` if it is a valid topic name, else raise :class:`InvalidTopic`."""
    if not isinstance(name, str):
        raise InvalidTopic(f"topic must be a string, not {type(name).__name__}")
    if not name:
        raise InvalidTopic("topic must not be empty")
    if len(name) > MAX_TOPIC_LENGTH:
        raise InvalidTopic(f"topic is {len(name)} characters long; the limit is {MAX_TOPIC_LENGTH}")
    if not _TOPIC.fullmatch(name):
        raise InvalidTopic(
            f"topic {name[:50]!r} has a character outside A-Z a-z 0-9 _ - . : @ = "
            "or does not start with a letter, digit or _"
        )
    return name


def is_internal(topic: str) -> bool:
    """Whether ``topic`` is one of Megaphone's own (see :data:`INTERNAL_PREFIXES`)."""
    return topic.startswith(INTERNAL_PREFIXES)
