"""Tier 1: the topic permission policy and signed connection tokens."""

from __future__ import annotations

import time

import pytest
from django.contrib.auth.models import AnonymousUser
from django.test import override_settings

from megaphone.server.permissions import (
    PolicyError,
    Service,
    allowed,
    compile_rules,
    may_read_history,
    may_see_presence,
    may_subscribe,
)
from megaphone.server.tokens import InvalidToken, issue_token, verify_token


class User:
    is_authenticated = True

    def __init__(self, pk: int, is_staff: bool = False) -> None:
        self.pk = pk
        self.is_staff = is_staff


ANON = AnonymousUser()
ALICE, BOB, STAFF = User(1), User(2), User(3, is_staff=True)


def test_default_policy_private_topics_belong_to_their_owner() -> None:
    for action in ("subscribe", "publish", "history", "presence"):
        assert allowed(ALICE, action, "user:1")
        assert not allowed(BOB, action, "user:1")
        assert not allowed(ANON, action, "user:1")
        assert not allowed(None, action, "user:1")
    assert allowed(ANON, "subscribe", "broadcast") and allowed(ANON, "publish", "news")
    assert allowed(STAFF, "subscribe", "_megaphone.stats")
    assert not allowed(ALICE, "subscribe", "_megaphone.stats")


def deny_bob(user: object, action: str, topic: str) -> bool:
    return user is not BOB


@override_settings(
    MEGAPHONE={
        "PERMISSIONS": [
            {"topics": "announcements", "subscribe": "anyone", "publish": "staff"},
            {"topics": "team.*", "default": "authenticated", "presence": "nobody"},
            {"topics": "custom", "default": f"{__name__}.deny_bob"},
        ]
    }
)
def test_configured_rules_first_match_wins_and_unmatched_is_refused() -> None:
    assert allowed(ANON, "subscribe", "announcements")
    assert not allowed(ALICE, "publish", "announcements") and allowed(
        STAFF, "publish", "announcements"
    )
    assert not allowed(ANON, "history", "announcements")  # not named, no default: nobody
    assert allowed(ALICE, "publish", "team.red") and not allowed(ANON, "subscribe", "team.red")
    assert not allowed(ALICE, "presence", "team.red")
    assert allowed(ALICE, "subscribe", "custom") and not allowed(BOB, "subscribe", "custom")
    assert not allowed(STAFF, "subscribe", "unlisted")


@pytest.mark.parametrize(
    ("rules", "error"),
    [
        ("anyone", "list"),
        ([{"subscribe": "anyone"}], "'topics' glob"),
        ([{"topics": "*", "subscrbe": "anyone"}], "unknown keys: subscrbe"),
        ([{"topics": "*", "default": "everyone"}], "unknown who 'everyone'"),
        ([{"topics": "*", "default": "no.such.function"}], "cannot import"),
    ],
)
def test_bad_rules_say_why(rules: object, error: str) -> None:
    with pytest.raises(PolicyError, match=error):
        compile_rules(rules)


def test_token_round_trip_and_refusals() -> None:
    token = issue_token(ALICE)
    claims = verify_token(token)
    assert claims.user_id == "1" and claims.expires_at > time.time()
    with pytest.raises(InvalidToken, match="bad signature"):
        verify_token(token[:-2] + ("A" if token[-2] != "A" else "B") + token[-1])
    with pytest.raises(InvalidToken, match="bad signature"):
        verify_token("not-a-token")
    with pytest.raises(InvalidToken, match="expired"):
        verify_token(issue_token(ALICE, ttl=-1))


def test_a_token_signed_with_another_key_is_refused() -> None:
    with override_settings(SECRET_KEY="another-secret-key-" * 3):
        foreign = issue_token(ALICE)
    with pytest.raises(InvalidToken, match="bad signature"):
        verify_token(foreign)


class Key(Service):
    __slots__ = ()

    def allows(self, topic: str) -> bool:
        return topic.startswith("orders.")


@override_settings(
    MEGAPHONE={"PERMISSIONS": [{"topics": "*", "default": "anyone", "presence": "staff"}]}
)
def test_each_disclosure_has_one_decision_and_the_stats_topic_carries_presence() -> None:
    assert may_read_history(ANON, "room") and may_subscribe(ANON, "room")
    assert not may_see_presence(ANON, "room") and may_see_presence(STAFF, "room")
    # The dashboard's stats list topics with their subscriber counts: live or past, presence.
    assert not may_subscribe(ANON, "_megaphone.stats")
    assert not may_read_history(ANON, "_megaphone.stats")
    assert may_subscribe(STAFF, "_megaphone.stats") and may_read_history(STAFF, "_megaphone.stats")
    # A server-side key is decided by its own scope, for every action.
    assert may_read_history(Key(), "orders.1") and may_see_presence(Key(), "orders.1")
    assert not may_read_history(Key(), "room") and not may_see_presence(Key(), "room")
