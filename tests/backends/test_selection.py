"""A backend is chosen by URL scheme or by the path of a class; a value naming nothing usable is
a system-check error (``megaphone.E002`` for a URL, ``megaphone.E005`` for a class path), never
a traceback on first use."""

from __future__ import annotations

from typing import Any

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from megaphone.backends import InvalidBackend, backend_from_url
from megaphone.backends.memory import MemoryBackend


class PathBackend(MemoryBackend):
    """A backend of the application's: the memory backend, remembering how it was built."""

    def __init__(self, url: str, **options: Any) -> None:
        super().__init__(url, **options)
        self.options = options


class NotABackend:
    def __init__(self, url: str, **options: Any) -> None:
        self.url = url

    async def start(self, on_message: Any) -> None: ...


class Refuses(MemoryBackend):
    def __init__(self, url: str, **options: Any) -> None:
        raise ValueError("needs a server name")


NOT_A_CLASS = "not a class"


def ids(backend: str) -> set[str]:
    with override_settings(MEGAPHONE={"BACKEND": backend}):
        return {message.id for message in run_checks(tags=["megaphone"])}


def test_a_class_path_builds_that_class_with_the_setting_and_the_options() -> None:
    backend = backend_from_url(f"{__name__}:PathBackend", history_size=7, presence_ttl=3.0)
    assert isinstance(backend, PathBackend)
    assert backend.url == f"{__name__}:PathBackend"
    assert backend.options == {"history_size": 7, "presence_ttl": 3.0}
    assert backend.history_limits("t") == (7, 600.0)
    assert ids(f"{__name__}:PathBackend") == set()


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("tests.backends.no_such_module:Backend", "cannot import 'tests.backends.no_such_module'"),
        (f"{__name__}:Missing", "has no class 'Missing'"),
        (f"{__name__}:NOT_A_CLASS", "has no class 'NOT_A_CLASS'"),
        (f"{__name__}:NotABackend", "is not a Megaphone backend: it lacks stop, subscribe"),
        (f"{__name__}:Refuses", "Refuses('tests.backends.test_selection:Refuses') failed"),
    ],
)
def test_a_class_path_naming_nothing_usable_is_error_e005(value: str, says: str) -> None:
    with pytest.raises(InvalidBackend, match=says.replace("(", r"\(").replace(")", r"\)")):
        backend_from_url(value)
    assert ids(value) == {"megaphone.E005"}


@pytest.mark.parametrize("value", ["kafka://x", "redis://:bad-port:x/0", "memory", "a.b:"])
def test_a_url_naming_nothing_usable_is_error_e002(value: str) -> None:
    with pytest.raises(InvalidBackend):
        backend_from_url(value)
    assert ids(value) == {"megaphone.E002"}


def test_a_sentinel_url_names_its_sentinels_service_and_database() -> None:
    from megaphone.backends.redis_sentinel import RedisSentinelBackend, SentinelURL

    parsed = SentinelURL("redis+sentinel://:s%40cret@10.0.0.1:26379,[::1]:26380/mymaster/3")
    assert parsed.sentinels == [("10.0.0.1", 26379), ("::1", 26380)]
    assert (parsed.service, parsed.db, parsed.password) == ("mymaster", 3, "s@cret")
    backend = backend_from_url("redis+sentinel://127.0.0.1:26379/mymaster")
    assert isinstance(backend, RedisSentinelBackend)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+sentinel://127.0.0.1:26379/", "/<service>/<db>"),
        ("redis+sentinel://127.0.0.1/mymaster/0", "not host:port"),
        ("redis+sentinel://127.0.0.1:26379,/mymaster/0", "not host:port"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/zero", "not a number"),
        ("redis+sentinel://127.0.0.1:26379/mymaster/0/more", "/<service>/<db>"),
    ],
)
def test_a_bad_sentinel_url_is_a_clear_error(url: str, says: str) -> None:
    with pytest.raises(InvalidBackend, match="invalid Redis Sentinel URL") as error:
        backend_from_url(url)
    assert says in str(error.value)
    with override_settings(MEGAPHONE={"BACKEND": url}):
        assert "megaphone.E002" in [m.id for m in run_checks()]


def test_a_cluster_url_builds_the_cluster_backend() -> None:
    from megaphone.backends.redis_cluster import RedisClusterBackend

    backend = backend_from_url("redis+cluster://:pw@127.0.0.1:7000,127.0.0.1:7001/")
    assert isinstance(backend, RedisClusterBackend)


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("redis+cluster://127.0.0.1/", "not host:port"),
        ("redis+cluster://127.0.0.1:7000,:7001/", "not host:port"),
        ("redis+cluster://127.0.0.1:7000/3", "only database 0"),
    ],
)
def test_a_bad_cluster_url_is_a_clear_error(url: str, says: str) -> None:
    with pytest.raises(InvalidBackend, match="invalid Redis Cluster URL") as error:
        backend_from_url(url)
    assert says in str(error.value)
    with override_settings(MEGAPHONE={"BACKEND": url}):
        assert "megaphone.E002" in [m.id for m in run_checks()]
