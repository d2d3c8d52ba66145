"""Tier 3, in a real browser: the staff dashboard shows live figures from the server, on a time
axis, with the last minutes drawn at once, and the application's topics apart from Megaphone's."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from contextlib import ExitStack

import pytest
from playwright.sync_api import Page, expect
from websockets.sync.client import connect

from tests.conftest import ROOT, ServerProcess, create_superuser, timeout

from .browser import chromium

pytestmark = pytest.mark.browser


def log_in_to_the_dashboard(page: Page, server: ServerProcess) -> None:
    create_superuser(server, "ops")
    page.goto(f"{server.http_url}/megaphone/dashboard/")
    assert "/admin/login/" in page.url  # anonymous visitors are sent to log in
    page.fill("#id_username", "ops")
    page.fill("#id_password", "a-long-test-password")
    page.click("input[type=submit]")
    page.wait_for_url("**/megaphone/dashboard/", timeout=timeout(10_000))
    expect(page.locator("#status")).to_have_attribute("data-state", "open", timeout=timeout(10_000))


def test_dashboard_requires_staff_and_shows_live_figures(server: ServerProcess) -> None:
    with ExitStack() as stack, chromium() as browser:
        subscribers = [
            stack.enter_context(connect(f"{server.ws_url}/ws/broadcast/busy-topic/"))
            for _ in range(3)
        ]
        page = browser.new_page()
        log_in_to_the_dashboard(page, server)
        expect(page.locator("#workers")).to_have_text(
            "1 worker(s) reporting", timeout=timeout(10_000)
        )
        # three subscribers here plus the page's own socket on the stats topic
        expect(page.locator("#connections")).to_have_text("4", timeout=timeout(10_000))
        row = page.locator("#busiest tr", has_text="busy-topic")
        expect(row).to_contain_text("3", timeout=timeout(10_000))
        subscribers[0].send("a message")
        expect(page.locator("#published-rate")).to_have_text(
            re.compile(r"^\d+\.\d$"), timeout=timeout(10_000)
        )


def test_dashboard_draws_a_time_axis_hides_internal_topics_and_shows_history_on_open(
    server_factory: Callable[..., ServerProcess],
) -> None:
    server = server_factory(
        env={
            "DJANGO_SETTINGS_MODULE": "tests.e2e.hardening_settings",
            "PYTHONPATH": str(ROOT),
            "MEGAPHONE_OVERRIDES": json.dumps({"DASHBOARD_INTERVAL": 0.5}),
        }
    )
    with connect(f"{server.ws_url}/ws/broadcast/app-topic/"), chromium() as browser:
        page = browser.new_page()
        log_in_to_the_dashboard(page, server)
        chart = page.locator("#rates-chart")
        points = "(n) => Number(document.querySelector('#rates-chart').dataset.points) >= n"
        page.wait_for_function(points, arg=4, timeout=timeout(10_000))
        # wall-clock labels, one every two minutes over the ten minutes drawn
        ticks = chart.locator("text.tick")
        expect(ticks).to_have_count(5)
        for label in ticks.all_text_contents():
            assert re.fullmatch(r"\d\d:\d\d", label), label
        # the application's topic is listed; the page's own subscriptions (_megaphone.stats,
        # $user:<id>) only among Megaphone's own topics
        expect(page.locator("#busiest tr", has_text="app-topic")).to_have_count(1)
        listed = page.locator("#busiest td:first-child").all_text_contents()
        assert listed == ["app-topic"], listed
        expect(page.locator("#internal tr", has_text="_megaphone.stats")).to_have_count(1)
        internal = page.locator("#internal td:first-child").all_text_contents()
        assert all(name.startswith(("$", "_megaphone.")) for name in internal), internal
        earliest = float(chart.get_attribute("data-from") or "nan")

        # Opened again, the page draws from the stats topic's history: the snapshots the first
        # visit saw, not only those published after it opened.
        page.reload()
        drawn_since = (
            "(t) => { const from = document.querySelector('#rates-chart').dataset.from;"
            " return from !== undefined && from !== '' && Number(from) <= t; }"
        )
        page.wait_for_function(drawn_since, arg=earliest, timeout=timeout(10_000))
