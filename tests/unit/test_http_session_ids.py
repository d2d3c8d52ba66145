"""The ids of the HTTP transport's sessions (megaphone.server.httpsession): unguessable, bound to
the identity they were issued to, refused to anyone else and when altered in any way."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from django.contrib.auth.models import AnonymousUser
from django.test import override_settings

from megaphone.server.httpsession import PATH, new_session_id, owns, session_topic


def scope(pk: int | None) -> dict[str, Any]:
    user = AnonymousUser() if pk is None else SimpleNamespace(pk=pk, is_authenticated=True)
    return {"user": user}


def test_an_id_is_its_owners_only() -> None:
    alice, bob, anonymous = scope(1), scope(2), scope(None)
    session = new_session_id(alice)
    assert owns(session, alice)
    assert not owns(session, bob)
    assert not owns(session, anonymous)
    assert owns(new_session_id(anonymous), anonymous)
    assert not owns(new_session_id(anonymous), alice)


def test_ids_are_fresh_and_any_change_is_refused() -> None:
    alice = scope(1)
    ids = {new_session_id(alice) for _ in range(1000)}
    assert len(ids) == 1000
    session = ids.pop()
    for i, char in enumerate(session):
        if char == ".":
            continue
        other = "B" if char != "B" else "C"
        if i > session.index("."):
            other = "0" if char != "0" else "1"
        assert not owns(session[:i] + other + session[i + 1 :], alice)
    assert not owns(session + "0", alice)
    assert not owns(session[:-1], alice)
    assert not owns("", alice)


def test_another_secret_key_refuses_every_id() -> None:
    alice = scope(1)
    session = new_session_id(alice)
    with override_settings(SECRET_KEY="another-secret-key-of-another-deployment-" * 2):
        assert not owns(session, alice)


def test_paths_and_topics() -> None:
    match = PATH.match("/sse/connect/abc/")
    assert match is not None and match["session"] == "abc"
    match = PATH.match("/sse/connect/")
    assert match is not None and match["session"] is None
    assert PATH.match("/sse/connect/a/b/") is None
    assert session_topic("x").startswith("$")  # internal: no history, out of clients' reach
