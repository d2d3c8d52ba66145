"""Who may do what on which topic: the policy, decided in one place.

Actions are ``subscribe``, ``publish``, ``history`` and ``presence``. The project lists rules in
``MEGAPHONE["PERMISSIONS"]``; the first rule whose ``topics`` glob matches the topic decides::

    MEGAPHONE = {"PERMISSIONS": [
        {"topics": "user:*", "subscribe": "owner", "publish": "owner",
         "history": "owner", "presence": "owner"},
        {"topics": "announcements", "subscribe": "anyone", "publish": "staff"},
        {"topics": "*", "default": "authenticated"},
    ]}

Each action names a *who*: ``anyone``, ``authenticated``, ``staff``, ``owner`` (the topic's last
``:``-separated part is the user's primary key, as in ``user:42``), ``nobody``, or the dotted path
of a function ``f(user, action, topic) -> bool``. ``default`` covers the actions a rule does not
name. A topic no rule matches is refused (``nobody``).

:data:`DEFAULT_PERMISSIONS` applies when the setting is absent (``MEGAPHONE = {}``): private
``user:<id>`` topics belong to their owner and internal ``_megaphone.*`` topics to staff; on
``broadcast`` and ``broadcast.*`` (the raw endpoint ``/ws/broadcast/``'s topic and its family)
anyone may do anything; on any other topic anyone may subscribe and read history and presence,
but no client may publish. So a topic your server feeds (``megaphone.publish()``,
``broadcast_model``, the HTTP API, none of which is subject to this policy) cannot be written by
a browser until a rule opens it. A project that sets ``PERMISSIONS`` replaces the default
entirely: copy the rules it keeps.

**One decision per disclosure.** What a topic reveals beyond its live messages is decided here,
once, and every path that reveals it asks the same function: :func:`may_read_history` for a
topic's past messages (recovery with ``since``, the ``history`` op, the HTTP API's history),
:func:`may_see_presence` for who is on it (the ``presence`` op, join/leave events, the HTTP API's
presence and subscriber counts). :func:`may_subscribe` adds that a topic carrying other topics'
subscriber counts (:data:`PRESENCE_CARRYING`: the dashboard's stats) also needs the presence
right. A :class:`Service` principal (an HTTP API key) is decided by its own scope instead of the
rules: the operator granted it its topics for every action.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from fnmatch import fnmatchcase
from functools import cache
from typing import Any, Literal

from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from megaphone.conf import get_config
from megaphone.engine.stats import STATS_TOPIC

Action = Literal["subscribe", "publish", "history", "presence"]
ACTIONS: tuple[Action, ...] = ("subscribe", "publish", "history", "presence")
WHO = ("anyone", "authenticated", "staff", "owner", "nobody")

DEFAULT_PERMISSIONS: tuple[dict[str, str], ...] = (
    {"topics": "user:*", "default": "owner"},
    {"topics": "_megaphone.*", "default": "staff"},
    {"topics": "broadcast", "default": "anyone"},
    {"topics": "broadcast.*", "default": "anyone"},
    {"topics": "*", "default": "anyone", "publish": "nobody"},
)


class PolicyError(ValueError):
    """A rule of ``MEGAPHONE["PERMISSIONS"]`` that cannot be used; the message says why."""


Rule = tuple[str, dict[str, Callable[[Any, str, str], bool]]]


def _is_authenticated(user: Any) -> bool:
    return bool(user is not None and getattr(user, "is_authenticated", False))


def _owner(user: Any, action: str, topic: str) -> bool:
    return _is_authenticated(user) and topic.rpartition(":")[2] == str(user.pk)


_BUILTIN: dict[str, Callable[[Any, str, str], bool]] = {
    "anyone": lambda user, action, topic: True,
    "authenticated": lambda user, action, topic: _is_authenticated(user),
    "staff": lambda user, action, topic: _is_authenticated(user) and bool(user.is_staff),
    "owner": _owner,
    "nobody": lambda user, action, topic: False,
}


def _who(value: object) -> Callable[[Any, str, str], bool]:
    if not isinstance(value, str):
        raise PolicyError(f"a who must be a string, not {value!r}")
    if value in _BUILTIN:
        return _BUILTIN[value]
    if "." not in value:
        raise PolicyError(f"unknown who {value!r}: use one of {', '.join(WHO)} or a dotted path")
    try:
        who: Callable[[Any, str, str], bool] = import_string(value)
        return who
    except ImportError as exc:
        raise PolicyError(f"cannot import {value!r}: {exc}") from None


def compile_rules(rules: object) -> list[Rule]:
    """Check and compile rules; raise :class:`PolicyError` for the first bad one."""
    if not isinstance(rules, (list, tuple)):
        raise PolicyError("PERMISSIONS must be a list of rules")
    compiled: list[Rule] = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, Mapping) or not isinstance(rule.get("topics"), str):
            raise PolicyError(f"rule {index} must be a dict with a 'topics' glob")
        unknown = set(rule) - {"topics", "default", *ACTIONS}
        if unknown:
            raise PolicyError(f"rule {index} has unknown keys: {', '.join(sorted(unknown))}")
        default = rule.get("default", "nobody")
        compiled.append(
            (rule["topics"], {action: _who(rule.get(action, default)) for action in ACTIONS})
        )
    return compiled


@cache
def _rules() -> list[Rule]:
    return compile_rules(get_config().PERMISSIONS or DEFAULT_PERMISSIONS)


@receiver(setting_changed)
def _clear_rules_cache(*, setting: str, **kwargs: Any) -> None:
    if setting == "MEGAPHONE":
        _rules.cache_clear()


class Service:
    """A server-side principal (an HTTP API key): :meth:`allows` decides every action."""

    __slots__ = ()

    def allows(self, topic: str) -> bool:
        raise NotImplementedError


#: Topics whose messages carry other topics' subscriber counts: the dashboard's stats.
PRESENCE_CARRYING = frozenset({STATS_TOPIC})


def allowed(user: Any, action: Action, topic: str) -> bool:
    """Whether ``user`` (a Django user, AnonymousUser, None or a :class:`Service`) may
    ``action`` on ``topic``."""
    if isinstance(user, Service):
        return user.allows(topic)
    for pattern, actions in _rules():
        if fnmatchcase(topic, pattern):
            return bool(actions[action](user, action, topic))
    return False


def may_subscribe(principal: Any, topic: str) -> bool:
    """Whether ``principal`` may get ``topic``'s live messages (see :func:`_carried_presence`)."""
    return allowed(principal, "subscribe", topic) and _carried_presence(principal, topic)


def may_read_history(principal: Any, topic: str) -> bool:
    """Whether ``principal`` may read messages of ``topic`` published before it subscribed
    (see :func:`_carried_presence`)."""
    return allowed(principal, "history", topic) and _carried_presence(principal, topic)


def may_see_presence(principal: Any, topic: str) -> bool:
    """Whether ``principal`` may learn who is on ``topic``: entries, join/leave events, counts."""
    return allowed(principal, "presence", topic)


def _carried_presence(principal: Any, topic: str) -> bool:
    """The messages of a :data:`PRESENCE_CARRYING` topic, live or past, disclose presence too."""
    return topic not in PRESENCE_CARRYING or may_see_presence(principal, topic)
