"""Broadcast a model's saves and deletes to a topic, once the transaction commits. Opt-in::

    @megaphone.broadcast_model(topic="orders", serialize=lambda order: {"status": order.status})
    class Order(models.Model): ...

    megaphone.broadcast_model(User, topic=lambda user: f"user:{user.pk}")  # a model you don't own

Each change publishes the JSON value ``{"event": "created" | "updated" | "deleted", "model":
"app_label.model_name", "pk": ..., "data": serialize(instance)}`` (``data`` only with
``serialize``: by default nothing but the primary key leaves the database, so no field is
broadcast by accident). The message is built when the signal fires, so it shows the instance as
it was saved. Inside a transaction it is written in that transaction (the transactional outbox of
:func:`megaphone.publish`) and published once it commits, by the serving workers if the process
dies first, exactly once: a rolled-back change publishes nothing. In autocommit mode it is
published right after the save.

Errors: an exception of ``topic`` or ``serialize``, or an invalid message (bad topic, too large)
propagates from ``save()``/``delete()``: it is a bug to fix. Inside a transaction (``atomic()``,
``ATOMIC_REQUESTS``) it rolls the change back; in autocommit mode the row is already written. A
failure to publish after the commit (backend unavailable) cannot undo the commit: it is logged on
the ``megaphone.contrib.model_broadcast`` logger, with the topic, and the request goes on.

``post_save``/``post_delete`` are not sent by ``QuerySet.update()``, ``bulk_create()`` and
``bulk_update()``, so those changes are not broadcast; fixtures being loaded (``raw``) are not
either.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from functools import partial
from typing import Any, TypeVar

from django.db import models
from django.db.models.signals import post_delete, post_save

from megaphone.backends import transactional
from megaphone.core.logs import get_logger
from megaphone.engine.publishing import (
    PublishError,
    apublish_prepared,
    prepare,
    publish_on_commit,
    publish_prepared,
)

logger = get_logger(__name__)

EVENTS = ("created", "updated", "deleted")
ModelT = TypeVar("ModelT", bound=type[models.Model])
Topic = str | Callable[[Any], str]

#: Model -> its registration, for :func:`unregister`.
_registered: dict[type[models.Model], tuple[Callable[..., None], Callable[..., None]]] = {}
#: Publications scheduled on a running loop (a commit made in async code), kept until done.
_tasks: set[asyncio.Task[Any]] = set()


def broadcast_model(
    model: ModelT | None = None,
    *,
    topic: Topic,
    serialize: Callable[[Any], Any] | None = None,
    events: tuple[str, ...] = EVENTS,
) -> Any:
    """Publish ``model``'s ``events`` on ``topic`` (a name, or a function of the instance).

    Used as a class decorator (``@broadcast_model(topic=...)``) or called with the model. Calling
    it again for a model replaces its registration.
    """
    unknown = set(events) - set(EVENTS)
    if unknown:
        raise ValueError(f"unknown events {sorted(unknown)}: use some of {EVENTS}")
    if model is None:
        return partial(broadcast_model, topic=topic, serialize=serialize, events=events)
    unregister(model)

    def saved(sender: Any, instance: Any, created: bool, raw: bool = False, **kwargs: Any) -> None:
        event = "created" if created else "updated"
        if not raw and event in events:
            _schedule(instance, event, topic, serialize, kwargs.get("using"))

    def deleted(sender: Any, instance: Any, **kwargs: Any) -> None:
        if "deleted" in events:
            _schedule(instance, "deleted", topic, serialize, kwargs.get("using"))

    uid = f"megaphone.broadcast_model:{model._meta.label_lower}"
    post_save.connect(saved, sender=model, weak=False, dispatch_uid=uid)
    post_delete.connect(deleted, sender=model, weak=False, dispatch_uid=uid)
    _registered[model] = (saved, deleted)
    return model


def unregister(model: type[models.Model]) -> bool:
    """Stop broadcasting ``model``; return whether it was broadcast."""
    if _registered.pop(model, None) is None:
        return False
    uid = f"megaphone.broadcast_model:{model._meta.label_lower}"
    post_save.disconnect(sender=model, dispatch_uid=uid)
    post_delete.disconnect(sender=model, dispatch_uid=uid)
    return True


def message_for(
    instance: Any, event: str, serialize: Callable[[Any], Any] | None
) -> dict[str, Any]:
    """The JSON value published for ``event`` on ``instance``."""
    value: dict[str, Any] = {
        "event": event,
        "model": instance._meta.label_lower,
        "pk": instance.pk,
    }
    if serialize is not None:
        value["data"] = serialize(instance)
    return value


def _schedule(
    instance: Any,
    event: str,
    topic: Topic,
    serialize: Callable[[Any], Any] | None,
    using: str | None,
) -> None:
    name = topic(instance) if callable(topic) else topic
    # Encoded now: the instance as saved, and errors raised inside the transaction.
    name, payload, is_json = prepare(name, message_for(instance, event, serialize))
    if transactional.in_transaction(using):
        publish_on_commit(name, payload, is_json)
    else:
        _publish(name, payload, is_json)


def _publish(topic: str, payload: str | bytes, is_json: bool) -> None:
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        try:
            publish_prepared(topic, payload, is_json)
        except PublishError as exc:
            logger.error("could not broadcast a change on %s after its commit: %s", topic, exc)
        return
    task = loop.create_task(_apublish(topic, payload, is_json))
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


async def _apublish(topic: str, payload: str | bytes, is_json: bool) -> None:
    try:
        await apublish_prepared(topic, payload, is_json)
    except PublishError as exc:
        logger.error("could not broadcast a change on %s after its commit: %s", topic, exc)
