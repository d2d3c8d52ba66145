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
``:``-separated part is the user's primary key, as in ``user:42``), ``nobody``,
``perm:<app_label>.<codename>`` (Django's ``user.has_perm``), ``group:<name>`` (the user is in
that Django group), or the dotted path of a function ``f(user, action, topic) -> bool``.
``default`` covers the actions a rule does not name. A topic no rule matches is refused
(``nobody``).

**Object permissions.** A rule with ``object`` resolves its topic to an object, and its ``perm:``
whos ask ``user.has_perm(perm, obj)``, so object-permission backends (django-guardian,
django-rules) decide: ``"object": "shop.Order"`` is the ``Order`` whose primary key is the topic's
last ``:``-separated part (``orders:17``); a dotted path names a function ``f(topic) -> object or
None``. A topic whose object does not exist (or whose key is not a valid one) is refused::

    {"topics": "orders:*", "object": "shop.Order",
     "default": "perm:shop.view_order", "publish": "perm:shop.change_order"}

**Off the event loop, once per subscription.** ``perm:``, ``group:``, object rules and functions
may query the database: the consumers ask :func:`aallowed` and its ``amay_*`` twins, which run them
in a worker thread (``database_sync_to_async``). They are asked at each subscribe (the protocol's
history and presence requests at each request), and a connection's right to publish on a topic
once per subscription (the raw endpoint: once per connection), never per message. A rule that
raises (the database is down) refuses, logged. Django's ``ModelBackend`` caches a user's
permissions on the user object: a connection sees a change of its user's permissions or groups
through ``perm:`` when it reconnects, through ``group:`` at its next subscribe.

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

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import cache
from typing import Any, Literal

from channels.db import database_sync_to_async
from django.apps import apps
from django.core.exceptions import ObjectDoesNotExist, ValidationError
from django.core.signals import setting_changed
from django.dispatch import receiver
from django.utils.module_loading import import_string

from megaphone.conf import get_config
from megaphone.core.logs import get_logger
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


logger = get_logger(__name__)

#: ``perm:<app_label>.<codename>``, as ``user.has_perm`` takes it.
_PERM = re.compile(r"perm:(\w+\.\w+)")


class PolicyError(ValueError):
    """A rule of ``MEGAPHONE["PERMISSIONS"]`` that cannot be used; the message says why."""


Decide = Callable[[Any, str, str], bool]
Resolver = Callable[[str], Any]


@dataclass(frozen=True, slots=True)
class Who:
    """A compiled *who*: ``decide(user, action, topic)``, and whether it may touch the database
    (``perm:``, ``group:``, an object rule, a function of the project's): the async paths run
    those in a worker thread (:func:`adecide`), never on the event loop."""

    decide: Decide
    blocking: bool


Rule = tuple[str, dict[Action, Who]]


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


def _has_perm(perm: str, resolver: Resolver | None) -> Decide:
    """``user.has_perm(perm)``, or with a resolver ``user.has_perm(perm, obj)`` for the topic's
    object: a topic whose object does not exist is refused."""

    def decide(user: Any, action: str, topic: str) -> bool:
        if user is None or not hasattr(user, "has_perm"):
            return False
        if resolver is None:
            return bool(user.has_perm(perm))
        obj = resolver(topic)
        return obj is not None and bool(user.has_perm(perm, obj))

    return decide


def _in_group(name: str) -> Decide:
    def decide(user: Any, action: str, topic: str) -> bool:
        return _is_authenticated(user) and bool(user.groups.filter(name=name).exists())

    return decide


def _who(value: object, resolver: Resolver | None = None) -> Who:
    if not isinstance(value, str):
        raise PolicyError(f"a who must be a string, not {value!r}")
    if value in _BUILTIN:
        return Who(_BUILTIN[value], blocking=False)
    if value.startswith("perm:"):
        if not _PERM.fullmatch(value):
            raise PolicyError(f"{value!r} must be perm:<app_label>.<codename>")
        return Who(_has_perm(value[5:], resolver), blocking=True)
    if value.startswith("group:"):
        if not value[6:]:
            raise PolicyError(f"{value!r} must be group:<name>")
        return Who(_in_group(value[6:]), blocking=True)
    if "." not in value:
        raise PolicyError(
            f"unknown who {value!r}: use one of {', '.join(WHO)}, perm:<app_label>.<codename>, "
            "group:<name> or a dotted path"
        )
    try:
        return Who(import_string(value), blocking=True)
    except ImportError as exc:
        raise PolicyError(f"cannot import {value!r}: {exc}") from None


def _model_resolver(model: Any) -> Resolver:
    """The object of a topic whose last ``:``-separated part is a primary key of ``model``;
    None when there is none (no such row, or not a valid key)."""

    def resolve(topic: str) -> Any:
        try:
            return model._default_manager.get(pk=topic.rpartition(":")[2])
        except (ObjectDoesNotExist, ValueError, TypeError, ValidationError):
            return None

    return resolve


def _resolver(value: object) -> Resolver:
    """A rule's ``object``: a model label (``"shop.Order"``) or the dotted path of a function
    ``f(topic) -> object or None``."""
    if not isinstance(value, str) or "." not in value:
        raise PolicyError(f"object must be a model label or a dotted path, not {value!r}")
    try:
        return _model_resolver(apps.get_model(value))
    except (LookupError, ValueError):
        pass
    try:
        return import_string(value)  # type: ignore[no-any-return]
    except ImportError:
        message = f"object {value!r} is neither an installed model nor importable"
        raise PolicyError(message) from None


def compile_rules(rules: object) -> list[Rule]:
    """Check and compile rules; raise :class:`PolicyError` for the first bad one."""
    if not isinstance(rules, (list, tuple)):
        raise PolicyError("PERMISSIONS must be a list of rules")
    compiled = []
    for index, rule in enumerate(rules):
        if not isinstance(rule, Mapping) or not isinstance(rule.get("topics"), str):
            raise PolicyError(f"rule {index} must be a dict with a 'topics' glob")
        unknown = set(rule) - {"topics", "default", "object", *ACTIONS}
        if unknown:
            raise PolicyError(f"rule {index} has unknown keys: {', '.join(sorted(unknown))}")
        default = rule.get("default", "nobody")
        try:
            resolver = _resolver(rule["object"]) if "object" in rule else None
            whos = {action: _who(rule.get(action, default), resolver) for action in ACTIONS}
        except PolicyError as exc:
            raise PolicyError(f"rule {index}: {exc}") from None
        compiled.append((rule["topics"], whos))
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


def _who_for(action: Action, topic: str) -> Who | None:
    for pattern, actions in _rules():
        if fnmatchcase(topic, pattern):
            return actions[action]
    return None


def allowed(user: Any, action: Action, topic: str) -> bool:
    """Whether ``user`` (a Django user, AnonymousUser, None or a :class:`Service`) may
    ``action`` on ``topic``. Sync code only: it may query the database (see :func:`aallowed`)."""
    if isinstance(user, Service):
        return user.allows(topic)
    who = _who_for(action, topic)
    return who is not None and _decide(who, user, action, topic)


def _decide(who: Who, user: Any, action: str, topic: str) -> bool:
    """``who``'s decision; a rule that fails (the database is down, a bug in the project's
    function or resolver) refuses, and says why in the log."""
    try:
        return bool(who.decide(user, action, topic))
    except Exception:
        logger.exception("permission check for %s on %s failed: refused", action, topic)
        return False


async def aallowed(user: Any, action: Action, topic: str) -> bool:
    """:func:`allowed` from async code: the same decision, and the rules that may touch the
    database (``perm:``, ``group:``, objects, functions) run in a worker thread, through
    ``database_sync_to_async``, so the event loop never waits on a query."""
    if isinstance(user, Service):
        return user.allows(topic)
    who = _who_for(action, topic)
    if who is None:
        return False
    if not who.blocking:
        return _decide(who, user, action, topic)
    decided: bool = await database_sync_to_async(_decide)(who, user, action, topic)
    return decided


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


async def amay_subscribe(principal: Any, topic: str) -> bool:
    """:func:`may_subscribe` from async code (see :func:`aallowed`)."""
    return await aallowed(principal, "subscribe", topic) and await _acarried_presence(
        principal, topic
    )


async def amay_read_history(principal: Any, topic: str) -> bool:
    """:func:`may_read_history` from async code (see :func:`aallowed`)."""
    return await aallowed(principal, "history", topic) and await _acarried_presence(
        principal, topic
    )


async def amay_see_presence(principal: Any, topic: str) -> bool:
    """:func:`may_see_presence` from async code (see :func:`aallowed`)."""
    return await aallowed(principal, "presence", topic)


async def _acarried_presence(principal: Any, topic: str) -> bool:
    return topic not in PRESENCE_CARRYING or await amay_see_presence(principal, topic)
