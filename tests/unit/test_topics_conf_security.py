"""Tier 1: topic names, settings, the Origin policy and the system checks."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from megaphone.conf import DEFAULTS, get_config
from megaphone.security import origin_allowed
from megaphone.topics import InvalidTopic, validate_topic


@pytest.mark.parametrize("name", ["broadcast", "chat.room-42", "user:17", "_x", "a" * 200, "A=b@c"])
def test_valid_topics(name: str) -> None:
    assert validate_topic(name) == name


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("", "empty"),
        ("a" * 201, "limit is 200"),
        ("bad$topic", "character"),
        ("-leading", "start"),
        ("has space", "character"),
        ("é", "character"),
        (42, "string"),
    ],
)
def test_invalid_topics_say_why(name: object, reason: str) -> None:
    with pytest.raises(InvalidTopic, match=reason):
        validate_topic(name)


def test_defaults_and_overrides() -> None:
    assert get_config().MAX_MESSAGE_SIZE == DEFAULTS["MAX_MESSAGE_SIZE"] == 65536
    with override_settings(MEGAPHONE={"MAX_MESSAGE_SIZE": 10}):
        assert get_config().MAX_MESSAGE_SIZE == 10
    assert get_config().MAX_MESSAGE_SIZE == 65536


def test_redis_url_environment_selects_the_backend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REDIS_URL", "redis://127.0.0.1:6379/3")
    get_config.cache_clear()
    try:
        assert get_config().BACKEND == "redis://127.0.0.1:6379/3"
    finally:
        monkeypatch.delenv("REDIS_URL")
        get_config.cache_clear()
    assert get_config().BACKEND == "memory://"


@override_settings(ALLOWED_HOSTS=["example.com", ".example.org"], DEBUG=False)
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://example.com", True),
        ("http://example.com:8000", True),
        ("https://www.example.org", True),
        ("https://evil.com", False),
        ("https://example.com.evil.com", False),
        ("null", False),
        ("", False),
        ("not a url", False),
    ],
)
def test_origin_follows_allowed_hosts(origin: str, allowed: bool) -> None:
    assert origin_allowed(origin) is allowed


@override_settings(MEGAPHONE={"ALLOWED_ORIGINS": ["https://app.example.com"]})
def test_explicit_allowed_origins_win() -> None:
    assert origin_allowed("https://app.example.com")
    assert not origin_allowed("http://app.example.com")


def ids() -> set[str]:
    return {message.id for message in run_checks(tags=["megaphone"])}


def test_checks_pass_by_default() -> None:
    assert ids() == set()


@override_settings(MEGAPHONE={"MAX_MESAGE_SIZE": 1})
def test_check_unknown_key() -> None:
    assert "megaphone.E001" in ids()


@override_settings(MEGAPHONE={"BACKEND": "kafka://x"})
def test_check_unknown_backend() -> None:
    assert "megaphone.E002" in ids()


@override_settings(MEGAPHONE={"OUTBOX_MAX_MESSAGES": 0})
def test_check_bad_bound() -> None:
    assert "megaphone.E003" in ids()


@pytest.mark.parametrize(
    "settings",
    [
        {"SUBSCRIBE_RATE": -1},
        {"SUBSCRIBE_RATE": float("nan")},
        {"SUBSCRIBE_RATE": "10"},
        {"SUBSCRIBE_BURST": 0},
        {"PUBLISH_RATE": None},
        {"PUBLISH_BURST": 1.5},
    ],
)
def test_check_bad_rate_limit(settings: dict[str, object]) -> None:
    with override_settings(MEGAPHONE=settings):
        assert ids() == {"megaphone.E050"}


def test_check_subscribe_burst_below_max_subscriptions() -> None:
    with override_settings(MEGAPHONE={"SUBSCRIBE_BURST": 10, "MAX_SUBSCRIPTIONS": 100}):
        assert ids() == {"megaphone.W050"}
    with override_settings(MEGAPHONE={"SUBSCRIBE_BURST": 10, "SUBSCRIBE_RATE": 0}):
        assert ids() == set()  # no limit


def test_check_several_workers_on_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MEGAPHONE_WORKERS", "4")
    assert "megaphone.E004" in ids()
    with override_settings(MEGAPHONE={"BACKEND": "redis://127.0.0.1:6379/0"}):
        monkeypatch.setenv("MEGAPHONE_WORKERS", "1")
        assert "megaphone.E004" not in ids()


@override_settings(MEGAPHONE={"PERMISSIONS": [{"topics": "*", "default": "everyone"}]})
def test_check_bad_permissions() -> None:
    assert "megaphone.E010" in ids()
