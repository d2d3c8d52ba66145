"""Tier 3: logging out closes that user's sockets (session and token ones) with 4401, and only
theirs; the token endpoint serves logged-in sessions only."""

from __future__ import annotations

import json
from urllib.error import HTTPError

import pytest
from playwright.sync_api import expect
from websockets.sync.client import connect

from tests.conftest import ServerProcess, create_superuser, timeout

from .browser import chromium
from .sessions import PASSWORD, Browser, close_code


def test_logout_closes_the_users_sockets_and_no_one_elses(server: ServerProcess) -> None:
    create_superuser(server, "alice")
    create_superuser(server, "bob")
    alice, bob = Browser(server), Browser(server)
    alice.log_in("alice")
    bob.log_in("bob")
    token = alice.token()
    with (
        alice.websocket("/ws/broadcast/") as alice_session,
        connect(f"{server.ws_url}/ws/connect/?token={token}") as alice_token,
        bob.websocket("/ws/broadcast/") as bob_session,
        connect(f"{server.ws_url}/ws/broadcast/") as anonymous,
    ):
        assert json.loads(alice_token.recv(timeout=timeout(5)))["type"] == "connected"
        alice.log_out()
        assert close_code(alice_session) == 4401
        assert close_code(alice_token) == 4401
        anonymous.send("still here")
        assert bob_session.recv(timeout=timeout(5)) == "still here"
        assert anonymous.recv(timeout=timeout(5)) == "still here"
    try:
        alice.token()
    except HTTPError as refused:
        assert refused.code == 401
        assert json.loads(refused.read())["error"]["code"] == "unauthenticated"
    else:
        raise AssertionError("a logged-out session got a connection token")


@pytest.mark.browser
def test_the_demo_page_stays_disconnected_after_its_user_logs_out(server: ServerProcess) -> None:
    create_superuser(server, "carol")
    with chromium() as browser:
        context = browser.new_context()
        page = context.new_page()
        page.goto(f"{server.http_url}/admin/login/?next=/")
        page.fill("#id_username", "carol")
        page.fill("#id_password", PASSWORD)
        page.click("input[type=submit]")
        page.wait_for_url(f"{server.http_url}/", timeout=timeout(10_000))
        status = page.locator("#status")
        expect(status).to_have_attribute("data-state", "open", timeout=timeout(10_000))
        logout = context.new_page()
        logout.goto(f"{server.http_url}/admin/")
        logout.locator("#logout-form button").click()
        expect(status).to_have_attribute("data-state", "closed", timeout=timeout(5_000))
        expect(status).to_contain_text("4401")
        page.wait_for_timeout(2_000)  # longer than the client's first retry delays
        expect(status).to_have_attribute("data-state", "closed")
        expect(status).not_to_contain_text("retrying")
