"""Tier 1: the default policy (``MEGAPHONE = {}``) keeps clients off the topics a server feeds."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest
from django.contrib.auth.models import AnonymousUser, User
from django.test import override_settings

from megaphone.server.permissions import ACTIONS, allowed
from tests.conftest import ROOT, timeout


@pytest.fixture(autouse=True)
def default_settings():
    with override_settings(MEGAPHONE={}):
        yield


@pytest.mark.parametrize("topic", ["broadcast", "broadcast.news", "broadcast.a.b"])
def test_anyone_may_do_anything_on_broadcast_and_its_family(topic: str) -> None:
    assert all(allowed(AnonymousUser(), action, topic) for action in ACTIONS)


@pytest.mark.parametrize("topic", ["orders", "broadcastx", "news.1", "room:7"])
def test_elsewhere_clients_may_subscribe_and_read_but_not_publish(topic: str) -> None:
    anonymous = AnonymousUser()
    assert not allowed(anonymous, "publish", topic)
    assert all(allowed(anonymous, action, topic) for action in ("subscribe", "history", "presence"))


def test_private_and_internal_topics_stay_closed() -> None:
    for action in ACTIONS:
        assert not allowed(AnonymousUser(), action, "user:1")
        assert not allowed(AnonymousUser(), action, "_megaphone.stats")


def test_the_readme_example_opens_and_closes_what_it_says() -> None:
    readme = (ROOT / "README.md").read_text()
    (block,) = [b for b in re.findall(r"```python\n(.*?)```", readme, re.S) if "PERMISSIONS" in b]
    namespace: dict[str, object] = {}
    exec(block, namespace)
    alice = User(username="alice", pk=1)
    with override_settings(MEGAPHONE=namespace["MEGAPHONE"]):
        assert allowed(alice, "publish", "chat.room") and allowed(alice, "publish", "broadcast")
        assert not allowed(AnonymousUser(), "publish", "chat.room")
        assert not allowed(alice, "publish", "broadcast.news")
        assert not allowed(alice, "publish", "orders") and allowed(alice, "subscribe", "orders")


def test_publish_in_a_process_that_serves_no_clients_raises_no_server_here() -> None:
    """``manage.py shell``, a Celery worker, a script: on the in-memory backend no client would
    ever receive the message, so publish() and apublish() say so instead of returning an
    offset."""
    code = (
        "import asyncio, django, megaphone\n"
        "django.setup()\n"
        "for call in (lambda: megaphone.publish('orders', {'id': 1}),\n"
        "             lambda: asyncio.run(megaphone.apublish('orders', {'id': 1}))):\n"
        "    try:\n"
        "        call()\n"
        "    except megaphone.NoServerHere as exc:\n"
        "        print('refused:', exc)\n"
        "    else:\n"
        "        print('published')\n"
    )
    env = {"DJANGO_SETTINGS_MODULE": "example.settings", "PYTHONPATH": str(ROOT / "example")}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout(60)
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    assert len(lines) == 2, run.stdout
    assert all(line.startswith("refused: cannot publish on 'orders'") for line in lines)
    assert "use the Redis backend" in lines[0]


def test_a_process_that_routes_megaphones_consumers_itself_serves_clients() -> None:
    """A project may build its own ``ProtocolTypeRouter`` from ``megaphone.routing``'s patterns
    instead of ``megaphone.asgi.application()``: its server process serves clients all the same,
    and publish() there reaches them."""
    code = (
        "import asyncio, django, megaphone\n"
        "django.setup()\n"
        "from channels.routing import URLRouter\n"
        "from megaphone.routing import websocket_urlpatterns\n"
        "router = URLRouter(websocket_urlpatterns)\n"
        "print(megaphone.publish('broadcast', 'hello').offset)\n"
    )
    env = {"DJANGO_SETTINGS_MODULE": "example.settings", "PYTHONPATH": str(ROOT / "example")}
    run = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=timeout(60)
    )
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "1"
