"""Tier 1: Django's permission model in the topic policy: ``perm:``, ``group:`` and ``object``
rules compile or say why not; rules that may query the database run off the event loop, once
per subscription and not once per message; a rule that fails refuses."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from django.test import override_settings

from megaphone.server.permissions import PolicyError, aallowed, compile_rules
from tests.unit.test_protocol_session import Harness

# The policy's worker threads go through database_sync_to_async, which tidies connections.
pytestmark = pytest.mark.django_db(transaction=True)

#: Calls of :func:`recording`: (thread, action, topic).
CALLS: list[tuple[threading.Thread, str, str]] = []


def recording(user: Any, action: str, topic: str) -> bool:
    CALLS.append((threading.current_thread(), action, topic))
    return True


def failing(user: Any, action: str, topic: str) -> bool:
    raise RuntimeError("the database is down")


RECORDED = {"PERMISSIONS": [{"topics": "*", "default": f"{__name__}.recording"}]}


@pytest.mark.parametrize(
    ("rule", "error"),
    [
        ({"topics": "*", "default": "perm:view_order"}, "perm:<app_label>.<codename>"),
        ({"topics": "*", "default": "group:"}, "group:<name>"),
        ({"topics": "*", "object": "nosuchapp.Nothing"}, "neither an installed model"),
        ({"topics": "*", "object": 3}, "model label or a dotted path"),
    ],
)
def test_bad_rules_say_why(rule: dict[str, Any], error: str) -> None:
    with pytest.raises(PolicyError, match="rule 0: .*" + error.replace("+", r"\+")):
        compile_rules([rule])


def test_django_rules_compile() -> None:
    compile_rules(
        [
            {"topics": "orders:*", "object": "auth.Group", "default": "perm:auth.view_group"},
            {"topics": "editors", "default": "group:editors", "publish": "staff"},
        ]
    )


async def test_a_rule_that_may_query_runs_in_a_worker_thread() -> None:
    CALLS.clear()
    with override_settings(MEGAPHONE=RECORDED):
        assert await aallowed(None, "subscribe", "news")
    assert [(action, topic) for _, action, topic in CALLS] == [("subscribe", "news")]
    assert CALLS[0][0] is not threading.current_thread()


async def test_a_failing_rule_refuses() -> None:
    rules = {"PERMISSIONS": [{"topics": "*", "default": f"{__name__}.failing"}]}
    with override_settings(MEGAPHONE=rules):
        assert not await aallowed(None, "subscribe", "news")


async def test_publish_is_decided_once_per_subscription_not_per_message() -> None:
    CALLS.clear()
    with override_settings(MEGAPHONE=RECORDED):
        h = Harness()
        await h.start()
        try:
            await h.request(op="subscribe", id=1, topic=h.topic)
            for i in range(5):
                await h.request(op="publish", id=2 + i, topic=h.topic, data=i)
            await h.frames(11)  # one reply to subscribe, five replies and five messages
            await h.request(op="unsubscribe", id=10, topic=h.topic)
            await h.request(op="subscribe", id=11, topic=h.topic)
            await h.request(op="publish", id=12, topic=h.topic, data="again")
            await h.frames(15)
        finally:
            await h.stop()
    publishes = [call for call in CALLS if call[1] == "publish"]
    assert len(publishes) == 2  # once per subscription: the resubscription asks again
    assert [c[1] for c in CALLS].count("subscribe") == 2
