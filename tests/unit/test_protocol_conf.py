"""Tier 1: per-topic options (TOPICS) and their system checks."""

from __future__ import annotations

from django.test import override_settings

from megaphone.checks import check_settings
from megaphone.conf import topic_options


def ids(**megaphone: object) -> list[str]:
    with override_settings(MEGAPHONE=megaphone):
        return [error.id for error in check_settings()]


def test_first_matching_pattern_wins_over_the_defaults() -> None:
    topics = {
        "chat.vip.*": {"history_size": 5, "durable": True},
        "chat.*": {"history_size": 100, "history_ttl": 60, "presence": True, "join_leave": True},
    }
    with override_settings(MEGAPHONE={"TOPICS": topics, "HISTORY_SIZE": 7}):
        vip = topic_options("chat.vip.1")
        assert (vip.history_size, vip.durable, vip.presence) == (5, True, False)
        room = topic_options("chat.room")
        assert (room.history_size, room.history_ttl, room.presence, room.join_leave) == (
            100,
            60.0,
            True,
            True,
        )
        other = topic_options("news")
        assert (other.history_size, other.presence, other.publish) == (7, False, True)
    assert topic_options("chat.room").history_size == 1000  # cache cleared with the setting


def test_valid_topics_settings_pass_the_checks() -> None:
    assert ids(TOPICS={"chat.*": {"history_size": 100, "presence": True, "publish": False}}) == []


def test_bad_topics_settings_are_system_check_errors() -> None:
    assert ids(TOPICS=["chat.*"]) == ["megaphone.E020"]
    assert ids(TOPICS={"chat room/*": {}}) == ["megaphone.E020"]
    assert ids(TOPICS={"chat.*": {"histroy_size": 1}}) == ["megaphone.E021"]
    assert ids(TOPICS={"chat.*": {"history_size": "100"}}) == ["megaphone.E021"]
    assert ids(TOPICS={"chat.*": {"history_size": True}}) == ["megaphone.E021"]
    assert ids(TOPICS={"chat.*": {"presence": 1}}) == ["megaphone.E021"]
    assert ids(TOPICS={"chat.*": None}) == ["megaphone.E021"]
    assert ids(RECOVERY_MAX_MESSAGES=0) == ["megaphone.E003"]
