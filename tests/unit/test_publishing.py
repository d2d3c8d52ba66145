"""Tier 1: publish()/apublish() argument rules, errors, and the background publisher's bounds."""

from __future__ import annotations

import asyncio
import datetime
import decimal
import threading
from collections.abc import Iterator

import pytest
from django.test import override_settings

import megaphone
from megaphone import backends
from megaphone.backends import BackendUnavailable
from megaphone.backends.durable import DurableTopics
from megaphone.backends.memory import MemoryBackend
from megaphone.core.message import Message
from megaphone.engine import publishing
from megaphone.engine.background import background
from megaphone.engine.node import get_node
from megaphone.engine.publishing import (
    InvalidMessage,
    MessageTooLarge,
    PublishError,
    PublishUnavailable,
)
from megaphone.testing import unique


def topic() -> str:
    return unique("pub")


def test_public_names_are_lazy_and_exported() -> None:
    assert megaphone.publish is publishing.publish
    assert megaphone.apublish is publishing.apublish
    assert issubclass(megaphone.PublishUnavailable, megaphone.PublishError)
    assert issubclass(megaphone.PublishUnavailable, BackendUnavailable)
    with pytest.raises(AttributeError):
        megaphone.no_such_name  # noqa: B018


@pytest.mark.parametrize(
    ("data", "payload", "is_json"),
    [
        ("héllo", "héllo", False),
        ("", "", False),
        (b"\x00\xff", b"\x00\xff", False),
        (bytearray(b"ab"), b"ab", False),
        (memoryview(b"cd"), b"cd", False),
        ({"a": [1, 2.5, None, True]}, '{"a":[1,2.5,null,true]}', True),
        (42, "42", True),
        (None, "null", True),
        ({"é": "ü"}, '{"é":"ü"}', True),
        (
            {"at": datetime.datetime(2026, 1, 2, 3, 4, 5, tzinfo=datetime.UTC)},
            '{"at":"2026-01-02T03:04:05Z"}',
            True,
        ),
        (decimal.Decimal("1.50"), '"1.50"', True),
    ],
)
def test_encode_data(data: object, payload: object, is_json: bool) -> None:
    assert publishing.encode_data(data) == (payload, is_json)


@pytest.mark.parametrize("data", [{1, 2}, float("nan"), object()])
def test_data_that_is_not_json_is_refused(data: object) -> None:
    with pytest.raises(InvalidMessage) as info:
        megaphone.publish(topic(), data)
    assert info.value.code == "invalid_data"


@pytest.mark.parametrize("name", ["", "bad topic", "-x", "a" * 201, 17])
def test_invalid_topic_is_refused_before_anything_is_sent(name: object) -> None:
    with pytest.raises(InvalidMessage) as info:
        megaphone.publish(name, "x")  # type: ignore[arg-type]
    assert info.value.code == "invalid_topic"
    assert isinstance(info.value, ValueError)


@override_settings(MEGAPHONE={"MAX_MESSAGE_SIZE": 10})
def test_message_too_large_counts_utf8_bytes() -> None:
    assert megaphone.publish(topic(), "x" * 10).offset == 1
    with pytest.raises(MessageTooLarge) as info:
        megaphone.publish(topic(), "é" * 6)  # 12 bytes
    assert info.value.code == "message_too_large"
    with pytest.raises(MessageTooLarge):
        megaphone.publish(topic(), {"key": "value"})  # 15 bytes of JSON


def test_publish_returns_the_message_with_offset_and_epoch() -> None:
    name = topic()
    first = megaphone.publish(name, "one")
    second = megaphone.publish(name, b"two")
    assert (first.topic, first.payload, first.offset) == (name, "one", 1)
    assert (second.payload, second.offset, second.epoch) == (b"two", 2, first.epoch)


def test_msg_id_makes_publishing_idempotent() -> None:
    name = topic()
    first = megaphone.publish(name, "once", msg_id="order-17-paid")
    again = megaphone.publish(name, "once", msg_id="order-17-paid")
    assert (again.offset, again.epoch) == (first.offset, first.epoch) == (1, first.epoch)
    assert megaphone.publish(name, "next").offset == 2
    for bad in ("", "x" * 65, 17, "a\x00b", "line\nbreak", "\x7f", "\x9f"):
        with pytest.raises(InvalidMessage) as info:
            megaphone.publish(name, "x", msg_id=bad)  # type: ignore[arg-type]
        assert info.value.code == "invalid_msg_id"


async def test_publish_from_async_code_says_to_use_apublish() -> None:
    with pytest.raises(RuntimeError, match="apublish"):
        megaphone.publish(topic(), "x")
    message = await megaphone.apublish(topic(), {"ok": True})
    assert message.offset == 1


def test_one_background_loop_and_one_node_for_every_thread() -> None:
    megaphone.publish(topic(), "warm up")
    loops, nodes = background.loops_started, background.nodes_started
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for i in range(50):
                megaphone.publish(topic(), str(i))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert background.loops_started == loops
    assert background.nodes_started == nodes
    names = [t.name for t in threading.enumerate()]
    assert names.count("megaphone-publisher") == 1


class BrokenBackend(MemoryBackend):
    """``broken://``: publish raises BackendUnavailable, or never answers on topics ``hang*``."""

    async def publish(self, topic: str, payload: str | bytes, **kwargs: object) -> Message:
        if topic.startswith("hang"):
            await asyncio.Event().wait()  # never set: the answer never comes
        raise BackendUnavailable("connection refused (test)")


@pytest.fixture
def broken_backend(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    schemes = {**backends._SCHEMES, "broken": f"{__name__}:BrokenBackend"}
    monkeypatch.setattr(backends, "_SCHEMES", schemes)
    with override_settings(MEGAPHONE={"BACKEND": "broken://", "PUBLISH_TIMEOUT": 0.3}):
        yield
    megaphone.publish(topic(), "back on memory")  # the publisher follows the setting back


def test_backend_failure_raises_publish_unavailable(broken_backend: None) -> None:
    with pytest.raises(PublishUnavailable, match="connection refused") as info:
        megaphone.publish(topic(), "x")
    assert info.value.code == "backend_unavailable"
    assert isinstance(info.value, PublishError)


def test_backend_that_does_not_answer_times_out(broken_backend: None) -> None:
    with pytest.raises(PublishUnavailable, match=r"within 0\.3 s"):
        megaphone.publish("hang-1", "x")


async def test_apublish_backend_failure_and_timeout(broken_backend: None) -> None:
    # apublish uses this loop's node, built from the (overridden) settings on first use.
    backend = (await get_node()).backend
    assert isinstance(backend, DurableTopics) and isinstance(backend.inner, BrokenBackend)
    with pytest.raises(PublishUnavailable):
        await megaphone.apublish(topic(), "x")
    with pytest.raises(PublishUnavailable, match=r"within 0\.3 s"):
        await megaphone.apublish("hang-2", "x")


def check_ids() -> set[str]:
    from django.core.checks import run_checks

    return {message.id for message in run_checks(tags=["megaphone"])}


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"API_KEYS": ["a-long-enough-random-key"]}, set()),
        ({"API_KEYS": {"a-long-enough-random-key": ["orders.*"]}}, set()),
        ({"API_KEYS": ["short"]}, {"megaphone.W030"}),
        ({"API_KEYS": [""]}, {"megaphone.E030"}),
        ({"API_KEYS": [17]}, {"megaphone.E030"}),
        ({"API_KEYS": {"a-long-enough-random-key": []}}, {"megaphone.E030"}),
        ({"API_BATCH_MAX": 0}, {"megaphone.E031"}),
        ({"API_MAX_BODY_SIZE": "big"}, {"megaphone.E031"}),
        ({"API_RATE_LIMIT": None}, set()),
        ({"API_RATE_LIMIT": -1}, {"megaphone.E031"}),
        ({"PUBLISH_TIMEOUT": 0}, {"megaphone.E031"}),
    ],
)
def test_system_checks_of_publishing_settings(
    settings: dict[str, object], expected: set[str]
) -> None:
    with override_settings(MEGAPHONE=settings):
        assert check_ids() == expected


def test_shutdown_stops_the_background_thread_and_publish_starts_it_again() -> None:
    megaphone.publish(topic(), "before")
    publishing.shutdown()
    assert "megaphone-publisher" not in [t.name for t in threading.enumerate()]
    assert megaphone.publish(topic(), "after").offset == 1
    assert [t.name for t in threading.enumerate()].count("megaphone-publisher") == 1
