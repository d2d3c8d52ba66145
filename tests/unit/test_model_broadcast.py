"""Tier 1: model changes are published after their transaction commits, and only then."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth.models import Group, Permission
from django.db import transaction
from django.test import override_settings

import megaphone
from megaphone import backends
from megaphone.backends.memory import MemoryBackend
from megaphone.contrib.model_broadcast import unregister
from megaphone.testing import unique
from tests.unit.test_publishing import BrokenBackend

pytestmark = pytest.mark.django_db(transaction=True)


def history(topic: str) -> list[Any]:
    page = asyncio.run(MemoryBackend("memory://").history(topic))
    assert all(m.json for m in page.messages)
    return [json.loads(m.payload) for m in page.messages]


@pytest.fixture
def topic() -> Iterator[str]:
    name = unique("groups")
    yield name
    unregister(Group)


def test_saves_and_deletes_are_published_with_the_serialized_data(topic: str) -> None:
    megaphone.broadcast_model(Group, topic=topic, serialize=lambda g: {"name": g.name})
    group = Group.objects.create(name="editors")
    group.name = "writers"
    group.save()
    pk = group.pk
    group.delete()
    assert history(topic) == [
        {"event": "created", "model": "auth.group", "pk": pk, "data": {"name": "editors"}},
        {"event": "updated", "model": "auth.group", "pk": pk, "data": {"name": "writers"}},
        {"event": "deleted", "model": "auth.group", "pk": pk, "data": {"name": "writers"}},
    ]


def test_nothing_is_published_before_the_commit_nor_after_a_rollback(topic: str) -> None:
    megaphone.broadcast_model(Group, topic=topic)
    with transaction.atomic():
        kept = Group.objects.create(name="kept")
        assert history(topic) == []  # not committed yet
    assert history(topic) == [{"event": "created", "model": "auth.group", "pk": kept.pk}]
    with pytest.raises(RuntimeError), transaction.atomic():
        Group.objects.create(name="rolled back")
        raise RuntimeError("roll back")
    assert len(history(topic)) == 1


def test_decorator_form_topic_function_and_events(topic: str) -> None:
    decorate = megaphone.broadcast_model(
        topic=lambda group: f"{topic}.{group.name}", events=("deleted",)
    )
    assert decorate(Group) is Group
    group = Group.objects.create(name="a")
    assert history(f"{topic}.a") == []
    group.delete()
    assert [m["event"] for m in history(f"{topic}.a")] == ["deleted"]
    with pytest.raises(ValueError, match="unknown events"):
        megaphone.broadcast_model(Group, topic=topic, events=("saved",))


def test_other_models_and_unregistered_models_are_not_broadcast(topic: str) -> None:
    megaphone.broadcast_model(Group, topic=topic)
    Permission.objects.first()  # another model: no signal handler of ours runs
    assert unregister(Group) is True
    Group.objects.create(name="quiet")
    assert history(topic) == [] and unregister(Group) is False


def test_a_serializer_bug_fails_the_save_and_rolls_back_its_transaction(topic: str) -> None:
    megaphone.broadcast_model(Group, topic=topic, serialize=lambda g: {"bad": {1, 2}})
    with pytest.raises(megaphone.InvalidMessage), transaction.atomic():
        Group.objects.create(name="not json")
    assert not Group.objects.filter(name="not json").exists()
    assert history(topic) == []


@pytest.fixture
def broken_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    schemes = {**backends._SCHEMES, "broken": "tests.unit.test_publishing:BrokenBackend"}
    monkeypatch.setattr(backends, "_SCHEMES", schemes)
    assert BrokenBackend
    with override_settings(MEGAPHONE={"BACKEND": "broken://", "PUBLISH_TIMEOUT": 0.5}):
        yield
    megaphone.publish("back-to-memory", "x")


def test_a_publish_failure_after_the_commit_is_logged_not_raised(
    topic: str, broken_backend: None, caplog: pytest.LogCaptureFixture
) -> None:
    megaphone.broadcast_model(Group, topic=topic)
    with caplog.at_level(logging.ERROR, logger="megaphone.contrib.model_broadcast"):
        group = Group.objects.create(name="committed anyway")
    assert Group.objects.filter(pk=group.pk).exists()
    assert f"could not broadcast a change on {topic}" in caplog.text
