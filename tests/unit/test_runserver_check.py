"""Tier 1: system check megaphone.W061, which says when ``manage.py runserver`` is one that serves
no WebSocket (Django runs the command of the first installed app that has one)."""

from __future__ import annotations

import pytest
from django.test import override_settings

from megaphone.checks import check_runserver

APPS = ["django.contrib.auth", "django.contrib.contenttypes", "channels"]


@pytest.mark.parametrize(
    ("installed", "warned"),
    [
        (["megaphone", "django.contrib.staticfiles", *APPS], False),
        (["django.contrib.staticfiles", *APPS, "megaphone"], True),  # staticfiles' WSGI server
        (["daphne", "django.contrib.staticfiles", *APPS, "megaphone"], False),  # daphne's
        ([*APPS, "megaphone"], False),
    ],
)
def test_w061_when_the_first_runserver_serves_no_websocket(
    installed: list[str], warned: bool
) -> None:
    with override_settings(INSTALLED_APPS=installed, DEBUG=True):
        messages = check_runserver()
    assert [m.id for m in messages] == (["megaphone.W061"] if warned else [])
    if warned:
        assert "'django.contrib.staticfiles'" in messages[0].msg


def test_no_w061_without_debug() -> None:
    with override_settings(INSTALLED_APPS=["django.contrib.staticfiles", *APPS, "megaphone"]):
        assert check_runserver() == []
