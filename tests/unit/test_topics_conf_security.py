"""Tier 1: topic names, settings, the Origin policy (megaphone.server.origins) and the system
checks."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from megaphone.backends.memory import MemoryBackend
from megaphone.conf import DEFAULTS, get_config
from megaphone.core.topics import InvalidTopic, validate_topic
from megaphone.server.origins import origin_allowed


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


def scope(host: str, scheme: str = "ws", **headers: str) -> dict[str, object]:
    """A WebSocket handshake's scope with that Host (and headers)."""
    pairs = [(b"host", host.encode())] + [
        (name.replace("_", "-").encode(), value.encode()) for name, value in headers.items()
    ]
    return {"type": "websocket", "scheme": scheme, "headers": pairs}


@override_settings(ALLOWED_HOSTS=["example.com", ".example.org"], DEBUG=False)
@pytest.mark.parametrize(
    ("origin", "host", "scheme", "allowed"),
    [
        ("https://example.com", "example.com", "wss", True),
        ("https://example.com", "example.com:443", "wss", True),  # default port
        ("https://example.com:443", "example.com", "wss", True),
        ("http://example.com:8000", "example.com:8000", "ws", True),
        ("HTTPS://EXAMPLE.COM", "Example.com", "wss", True),
        ("https://www.example.org", "www.example.org", "wss", True),
        ("http://example.com:8001", "example.com:8000", "ws", False),  # another port
        ("http://example.com", "example.com", "wss", False),  # another scheme
        ("https://example.com", "example.com", "ws", False),
        ("https://www.example.org", "example.org", "wss", False),  # another host
        ("https://evil.com", "evil.com", "wss", False),  # Host not in ALLOWED_HOSTS
        ("https://example.com.evil.com", "example.com", "wss", False),
        ("https://user@example.com", "example.com", "wss", False),
        ("https://example.com/", "example.com", "wss", False),
        ("null", "example.com", "wss", False),
        ("", "example.com", "wss", False),
        ("not a url", "example.com", "wss", False),
        ("https://example.com", "", "wss", False),
    ],
)
def test_origin_is_the_handshakes_own(origin: str, host: str, scheme: str, allowed: bool) -> None:
    assert origin_allowed(origin, scope(host, scheme)) is allowed


@override_settings(
    ALLOWED_HOSTS=["example.com"],
    SECURE_PROXY_SSL_HEADER=("HTTP_X_FORWARDED_PROTO", "https"),
    USE_X_FORWARDED_HOST=True,
)
def test_origin_behind_a_proxy_follows_djangos_proxy_settings() -> None:
    proxied = scope("backend:8000", "ws", x_forwarded_proto="https", x_forwarded_host="example.com")
    assert origin_allowed("https://example.com", proxied)
    assert not origin_allowed("http://example.com", proxied)


@override_settings(
    ALLOWED_HOSTS=["example.com"],
    CSRF_TRUSTED_ORIGINS=["https://*.trusted.org"],
    MEGAPHONE={"ALLOWED_ORIGINS": ["https://app.example.net", "http://localhost:3000"]},
)
@pytest.mark.parametrize(
    ("origin", "allowed"),
    [
        ("https://app.example.net", True),
        ("https://app.example.net:443", True),
        ("http://app.example.net", False),
        ("https://app.example.net:8443", False),
        ("http://localhost:3000", True),
        ("http://localhost:3001", False),
        ("https://trusted.org", True),
        ("https://a.b.trusted.org", True),
        ("https://untrusted.org", False),
        ("http://a.trusted.org", False),
    ],
)
def test_listed_origins(origin: str, allowed: bool) -> None:
    assert origin_allowed(origin, scope("example.com", "wss")) is allowed


@override_settings(MEGAPHONE={"ALLOWED_ORIGINS": "https://*.example.com"})
def test_allowed_origins_as_a_string_allows_nothing_and_is_reported() -> None:
    assert not origin_allowed("https://evil.com", scope("example.com"))
    assert "megaphone.E040" in ids()


@pytest.mark.parametrize(
    ("origins", "error"),
    [
        (["https://app.example.com", "https://*.example.com", "http://[::1]:8000"], False),
        (["*"], False),
        (["app.example.com"], True),
        (["https://app.example.com/"], True),
        (["https://app.example.com/path"], True),
        (["ftp://app.example.com"], True),
        (["null"], True),
    ],
)
def test_check_allowed_origins_wants_full_origins(origins: list[str], error: bool) -> None:
    with override_settings(MEGAPHONE={"ALLOWED_ORIGINS": origins}):
        assert ("megaphone.E040" in ids()) is error
        assert ("megaphone.W040" in ids()) is ("*" in origins)


@pytest.mark.parametrize(
    ("settings", "expected"),
    [
        ({"MAX_REQUEST_BODY": None}, set()),
        ({"MAX_REQUEST_BODY": 0}, {"megaphone.E041"}),
        ({"MAX_REQUEST_BODY": "big"}, {"megaphone.E041"}),
        ({"MAX_REQUEST_BODY": 1024}, {"megaphone.W041"}),  # under API_MAX_BODY_SIZE
        ({"MAX_REQUEST_BODY": 1024, "API_MAX_BODY_SIZE": 1024}, set()),
    ],
)
def test_check_max_request_body(settings: dict[str, object], expected: set[str]) -> None:
    with override_settings(MEGAPHONE=settings):
        assert ids() & {"megaphone.E041", "megaphone.W041"} == expected


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


class OneProcessBackend(MemoryBackend):
    """A user's own backend that, like memory://, does not cross processes."""


def test_check_several_workers_on_a_backend_that_does_not_cross_processes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("MEGAPHONE_WORKERS", "4")
    assert "megaphone.E004" in ids()
    own = f"{__name__}:OneProcessBackend"
    with override_settings(MEGAPHONE={"BACKEND": own}):
        assert "megaphone.E004" in ids()
    with override_settings(MEGAPHONE={"BACKEND": "redis://127.0.0.1:6379/0"}):
        assert "megaphone.E004" not in ids()
    monkeypatch.setenv("MEGAPHONE_WORKERS", "1")
    assert "megaphone.E004" not in ids()


@override_settings(MEGAPHONE={"PERMISSIONS": [{"topics": "*", "default": "everyone"}]})
def test_check_bad_permissions() -> None:
    assert "megaphone.E010" in ids()
