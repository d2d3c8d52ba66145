"""Control of a user's live connections from the server: disconnect, unsubscribe, re-check.

Every authenticated connection listens to its user's internal control topic (``$user:<pk>``,
:func:`megaphone.server.auth.user_control_topic`), in whatever worker it is. An *order* published
there reaches every connection of that user, in every worker, through the backend (one publish,
whatever the number of workers or sockets):

* :func:`disconnect_user`: every socket of the user is closed with ``code`` (default
  :attr:`~megaphone.core.closecodes.CloseCode.DISCONNECTED`, 4410: megaphone.js and the Python
  client stop, unless they can fetch new credentials);
* :func:`unsubscribe_user`: the user's subscriptions to ``topic`` end: a protocol client gets
  ``{"type": "unsubscribed", "topic": ..., "code": reason, ...}`` (``reason`` defaults to
  ``server_unsubscribed``) and no message of the topic after it; a raw-endpoint client on that
  topic is closed with 4403;
* :func:`recheck_user`: each connection reloads its user from the database and asks the topic
  policy (``PERMISSIONS``) again for each of its subscriptions; those it may no longer hold end
  with ``unsubscribed`` and the code ``revoked`` (a raw client: 4403); a user that is gone or no
  longer active is closed with 4401.

**Live revocation.** :func:`connect_revocation` (called by the app's ``ready()``) re-checks a user
whenever what the policy reads about them changes: their groups or permissions (``m2m_changed``
on ``User.groups`` and ``User.user_permissions``, either side), a group's permissions (every
member), a save of the user (``is_active``, ``is_staff``... but not a save of ``last_login``
alone) and its deletion. Inside a transaction the order is written with it and sent once it
commits (:func:`megaphone.publish`'s transactional outbox), so the re-check reads the committed
rights. A re-check costs one publish, then one query per connection of the user (and the
policy's own queries); connections of other users are not touched.

Orders are sync functions (views, signals, tasks, ``manage.py megaphone``); the ``a``-prefixed
twins are for async code. They raise :class:`~megaphone.engine.publishing.PublishError` when the
backend cannot take the order. The signal receivers never fail the change itself: a re-check
this process cannot publish (the backend down, or the in-memory backend in a process that
serves no clients: ``manage.py shell``, a script) is written to the transactional outbox, and
the serving workers' relay sends it within about two ``TRANSACTION_RELAY_INTERVAL``. Delivery
is the backend's fan-out: at most once, like any live message; a worker that was cut off from
the backend when the order went out does not get it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal

from megaphone.core.closecodes import CloseCode
from megaphone.core.logs import get_logger
from megaphone.core.topics import validate_topic
from megaphone.protocol.schema import Code
from megaphone.server.auth import LOGOUT, user_control_topic
from megaphone.server.hooks import PublishRejected

logger = get_logger(__name__)

Op = Literal["disconnect", "unsubscribe", "recheck"]
#: The ``unsubscribed`` code of :func:`unsubscribe_user` by default, and of a re-check.
SERVER_UNSUBSCRIBED = Code.SERVER_UNSUBSCRIBED
REVOKED = Code.REVOKED
#: Codes :func:`disconnect_user` may close with: every code of ours but 1006 (never sent).
DISCONNECT_CODES = frozenset(CloseCode) - {CloseCode.ABNORMAL}


@dataclass(frozen=True, slots=True)
class Order:
    """One order on a user's control topic."""

    op: Op
    code: int = CloseCode.DISCONNECTED
    topic: str = ""
    reason: str = SERVER_UNSUBSCRIBED

    def encode(self) -> str:
        if self.op == "disconnect":
            return json.dumps({"op": "disconnect", "code": int(self.code)})
        if self.op == "unsubscribe":
            return json.dumps({"op": "unsubscribe", "topic": self.topic, "reason": self.reason})
        return json.dumps({"op": "recheck"})


def decode_order(payload: str | bytes) -> Order | None:
    """The order ``payload`` carries; None (logged) for anything else. The logout notice of
    :func:`megaphone.server.auth.close_user_connections` is a disconnect with 4401."""
    if payload == LOGOUT:
        return Order("disconnect", code=CloseCode.UNAUTHORIZED)
    try:
        value = json.loads(payload)
        op = value["op"]
        if op == "disconnect":
            return Order("disconnect", code=_close_code(value["code"]))
        if op == "unsubscribe":
            return Order(
                "unsubscribe", topic=validate_topic(value["topic"]), reason=value["reason"]
            )
        if op == "recheck":
            return Order("recheck")
    except (ValueError, TypeError, KeyError):
        pass
    logger.error("ignored a control message that is no order: %.80r", payload)
    return None


def _close_code(code: object) -> int:
    if isinstance(code, bool) or not isinstance(code, int) or code not in DISCONNECT_CODES:
        codes = ", ".join(str(int(c)) for c in sorted(DISCONNECT_CODES))
        raise ValueError(f"a disconnect code is one of {codes}, not {code!r}")
    return code


def _reason(reason: str) -> str:
    PublishRejected(reason)  # the same rule as a rejection's code: [a-z][a-z0-9_]*, <= 40
    return reason


def _pk(user: Any) -> object:
    """A user's primary key: ``user`` may be the user or its primary key."""
    pk = getattr(user, "pk", user)
    if pk is None or isinstance(pk, bool) or not isinstance(pk, (int, str)) or pk == "":
        raise ValueError(f"not a saved user nor a primary key: {user!r}")
    return pk


def disconnect_order(code: int = CloseCode.DISCONNECTED) -> Order:
    return Order("disconnect", code=_close_code(code))


def unsubscribe_order(topic: str, reason: str = SERVER_UNSUBSCRIBED) -> Order:
    return Order("unsubscribe", topic=validate_topic(topic), reason=_reason(reason))


RECHECK = Order("recheck")


def send_order(user: Any, order: Order) -> None:
    """Publish ``order`` on ``user``'s control topic (sync code); inside a transaction, once it
    commits."""
    from megaphone.backends import transactional
    from megaphone.engine.publishing import publish_on_commit, publish_prepared

    topic = user_control_topic(_pk(user))
    if transactional.in_transaction():
        publish_on_commit(topic, order.encode(), False)
    else:
        publish_prepared(topic, order.encode(), False)


async def asend_order(user: Any, order: Order) -> None:
    """:func:`send_order` from async code (no transaction there: published at once)."""
    from megaphone.engine.publishing import apublish_prepared

    await apublish_prepared(user_control_topic(_pk(user)), order.encode(), False)


def disconnect_user(user: Any, code: int = CloseCode.DISCONNECTED) -> None:
    """Close every socket of ``user`` (a user or its primary key), in every worker, with
    ``code``; see the module docstring."""
    send_order(user, disconnect_order(code))


def unsubscribe_user(user: Any, topic: str, reason: str = SERVER_UNSUBSCRIBED) -> None:
    """End ``user``'s subscriptions to ``topic`` everywhere; the clients get ``unsubscribed``
    with ``reason`` (``[a-z][a-z0-9_]*``, at most 40 characters)."""
    send_order(user, unsubscribe_order(topic, reason))


def recheck_user(user: Any) -> None:
    """Re-check ``user``'s live subscriptions against the topic policy, everywhere."""
    send_order(user, RECHECK)


async def adisconnect_user(user: Any, code: int = CloseCode.DISCONNECTED) -> None:
    await asend_order(user, disconnect_order(code))


async def aunsubscribe_user(user: Any, topic: str, reason: str = SERVER_UNSUBSCRIBED) -> None:
    await asend_order(user, unsubscribe_order(topic, reason))


async def arecheck_user(user: Any) -> None:
    await asend_order(user, RECHECK)


# Live revocation ----------------------------------------------------------------------------


def _recheck_all(pks: Any) -> None:
    """Re-check each user of ``pks`` (a signal receiver's work): through the outbox when this
    process cannot publish (see the module docstring); an error is logged, never raised."""
    from megaphone.backends import transactional
    from megaphone.engine.publishing import PublishError

    for pk in pks:
        try:
            recheck_user(pk)
        except PublishError as exc:
            try:
                topic = user_control_topic(_pk(pk))
                transactional.write(topic, RECHECK.encode(), False, transactional.new_msg_id())
            except Exception:
                logger.exception("re-check of user %s not sent (%s), nor queued", pk, exc)
            else:
                logger.info("re-check of user %s left to the serving workers' relay: %s", pk, exc)


def _user_pks_of_groups(group_pks: Any) -> list[object]:
    from django.contrib.auth import get_user_model

    manager = get_user_model()._default_manager
    return list(manager.filter(groups__in=list(group_pks)).values_list("pk", flat=True).distinct())


_CLEARED = "_megaphone_cleared"  # the users a clear() affects, noted before it


def _user_m2m(field: str) -> Any:
    """The ``m2m_changed`` receiver of ``User.<field>`` (``groups``, ``user_permissions``), from
    either side: ``user.groups.remove(g)`` and ``g.user_set.remove(user)`` alike."""

    def users(instance: Any, reverse: bool, pk_set: Any) -> list[object]:
        if not reverse:  # instance is the user
            return [instance.pk]
        if pk_set is not None:  # instance is the group (permission): pk_set its users
            return list(pk_set)
        from django.contrib.auth import get_user_model

        manager = get_user_model()._default_manager
        return list(manager.filter(**{field: instance}).values_list("pk", flat=True))

    return _m2m_receiver(users)


def _group_permissions_users(instance: Any, reverse: bool, pk_set: Any) -> list[object]:
    """The members of the groups whose permissions changed."""
    from django.contrib.auth.models import Group

    if not reverse:  # group.permissions.add(p): instance is the group
        return _user_pks_of_groups([instance.pk])
    if pk_set is not None:  # permission.group_set.add(g): pk_set holds groups
        return _user_pks_of_groups(pk_set)
    return _user_pks_of_groups(
        Group.objects.filter(permissions=instance).values_list("pk", flat=True)
    )


def _m2m_receiver(users: Any) -> Any:
    """An ``m2m_changed`` receiver that re-checks ``users(instance, reverse, pk_set)`` after an
    add, a remove or a clear (whose users are read before it: after, they are gone)."""

    def receiver(
        sender: Any, instance: Any, action: str, reverse: bool, pk_set: Any, **kwargs: Any
    ) -> None:
        if action == "pre_clear":
            setattr(instance, _CLEARED, users(instance, reverse, None))
        elif action == "post_clear":
            _recheck_all(getattr(instance, _CLEARED, ()))
        elif action in ("post_add", "post_remove") and pk_set:
            _recheck_all(users(instance, reverse, pk_set))

    return receiver


_RECEIVERS: dict[str, Any] = {}


def connect_revocation() -> None:
    """Connect the receivers of live revocation (see the module docstring); idempotent. A user
    model without ``groups`` or ``user_permissions`` (no ``PermissionsMixin``) gets the save and
    delete receivers only."""
    from django.contrib.auth import get_user_model
    from django.contrib.auth.models import Group
    from django.db.models.signals import m2m_changed, post_delete, post_save

    user_model = get_user_model()
    for field in ("groups", "user_permissions"):
        through = getattr(getattr(user_model, field, None), "through", None)
        if through is not None:
            receiver = _RECEIVERS.setdefault(field, _user_m2m(field))
            m2m_changed.connect(receiver, sender=through, dispatch_uid=f"megaphone.{field}")
    if "groups" in _RECEIVERS:
        m2m_changed.connect(
            _RECEIVERS.setdefault("group", _m2m_receiver(_group_permissions_users)),
            sender=Group.permissions.through,
            dispatch_uid="megaphone.group_permissions",
        )
    post_save.connect(_on_user_saved, sender=user_model, dispatch_uid="megaphone.user_saved")
    post_delete.connect(_on_user_deleted, sender=user_model, dispatch_uid="megaphone.user_deleted")


def _on_user_saved(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    update_fields = kwargs.get("update_fields")
    if created or (update_fields is not None and set(update_fields) <= {"last_login"}):
        return
    _recheck_all([instance.pk])


def _on_user_deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
    if instance.pk is not None:
        _recheck_all([instance.pk])
