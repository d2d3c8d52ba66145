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
