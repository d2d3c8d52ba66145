"""Tier 1: what reaches a log line (megaphone.core.logs): escaped values, redacted secrets, one line
per refused handshake, and HTTP 500s sent to stderr when the project's LOGGING leaves them out."""

from __future__ import annotations

import contextvars
import logging

import pytest
from django.test import override_settings

from megaphone.core import logs
from megaphone.core.logs import SafeArguments, escape, redact_query, redact_urls


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("/ws/broadcast/news/", "/ws/broadcast/news/"),
        ("a\nFORGED", "a\\x0aFORGED"),
        ("a\r\nb", "a\\x0d\\x0ab"),
        ("\x1b[2Kred", "\\x1b[2Kred"),
        ("\x9b2K\x85", "\\x9b2K\\x85"),  # C1: 8-bit CSI, NEL
        ("a\u2028b\u2029c", "a\\u2028b\\u2029c"),
        ("\u202egnp.exe", "\\u202egnp.exe"),  # bidi override
        ("x\ud800y", "x\\ud800y"),  # a lone surrogate: a handler could not even encode it
        ("back\\x0a", "back\\\\x0a"),  # a literal backslash cannot pose as an escape
        ("café ☕", "café ☕"),
    ],
)
def test_escape_keeps_a_value_on_one_line(text: str, expected: str) -> None:
    assert escape(text) == expected


def test_escape_cuts_long_values() -> None:
    assert escape("a" * 1000, limit=10) == "a" * 10 + "...[1000 chars]"


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("token=abc", "token=[redacted]"),
        ("%74oken=abc", "%74oken=[redacted]"),  # decoded as the server decodes it
        ("%2574oken=abc", "%2574oken=[redacted]"),  # and once more
        ("TOKEN=abc&a=1", "TOKEN=[redacted]&a=1"),
        ("a=1&api_key=k&b=token", "a=1&api_key=[redacted]&b=token"),
        ("to+ken=abc", "to+ken=abc"),
        ("access_token=x&password=y", "access_token=[redacted]&password=[redacted]"),
        ("token", "token"),
        ("", ""),
    ],
)
def test_redact_query_decodes_names(query: str, expected: str) -> None:
    assert redact_query(query) == expected


def test_redact_urls_finds_query_strings_in_a_line() -> None:
    line = 'GET /ws/connect/?%74oken=abc&x=1 HTTP/1.1" 200 and /p?key=k'
    assert (
        redact_urls(line)
        == 'GET /ws/connect/?%74oken=[redacted]&x=1 HTTP/1.1" 200 and /p?key=[redacted]'
    )


def record(msg: str, *args: object) -> logging.LogRecord:
    return logging.LogRecord("uvicorn.access", logging.INFO, __file__, 1, msg, args, None)


def test_safe_arguments_format_with_s_r_and_d() -> None:
    item = record("%s %r %d %s", "a\nb", "c\x1bd", 7, None)
    assert SafeArguments().filter(item)
    assert item.getMessage() == "a\\x0ab 'c\\\\x1bd' 7 None"


def test_uvicorns_access_line_is_redacted_and_escaped() -> None:
    item = record(
        '%s - "%s %s HTTP/%s" %d', "127.0.0.1:5", "GET", "/?%74oken=secret&a=%0a", "1.1", 200
    )
    SafeArguments().filter(item)
    assert item.getMessage() == '127.0.0.1:5 - "GET /?%74oken=[redacted]&a=%0a HTTP/1.1" 200'


def test_a_logged_refusal_drops_the_servers_line_for_it() -> None:
    drop = SafeArguments(drop_logged_refusals=True)
    line = record('%s - "WebSocket %s" 403', "127.0.0.1:5", "/ws/nope/")

    def one_request() -> None:  # in its own context, as each ASGI request runs
        assert drop.filter(line)  # nothing refused yet in this context
        logs.log_refusal(logging.getLogger("test"), {"path": "/ws/nope/"}, "no such endpoint")
        assert not drop.filter(line)
        assert SafeArguments().filter(line)  # only the server loggers' filter drops it

    contextvars.copy_context().run(one_request)
    assert drop.filter(line)  # another request's context


def test_get_logger_adds_the_filter_once() -> None:
    logger = logs.get_logger("megaphone.test_logs")
    assert logs.get_logger("megaphone.test_logs") is logger
    assert sum(isinstance(f, SafeArguments) for f in logger.filters) == 1


@pytest.fixture
def request_logger(monkeypatch: pytest.MonkeyPatch) -> logging.Logger:
    """``django.request`` with no handler."""
    logger = logging.getLogger("django.request")
    monkeypatch.setattr(logger, "handlers", [])
    return logger


def added(logger: logging.Logger) -> int:
    return sum(isinstance(h, logs._RequestErrorsToStderr) for h in logger.handlers)


@pytest.mark.parametrize(
    ("logging_setting", "expected"),
    [
        ({"version": 1, "loggers": {"megaphone": {}}}, 1),
        ({}, 1),
        ({"version": 1, "loggers": {"django": {}}}, 0),  # the project decides
        ({"version": 1, "loggers": {"django.request": {}}}, 0),
        ({"version": 1, "root": {"handlers": []}}, 0),
    ],
)
def test_request_errors_reach_stderr_unless_the_project_routes_them(
    request_logger: logging.Logger,
    logging_setting: dict[str, object],
    expected: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [])  # pytest's capture handlers
    with override_settings(LOGGING=logging_setting):
        logs.ensure_request_errors_logged()
        logs.ensure_request_errors_logged()  # idempotent
        # Checked inside: Django 6 configures logging anew when the override ends.
        assert added(request_logger) == expected


def test_a_root_handler_prints_them_already(
    request_logger: logging.Logger, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(logging.getLogger(), "handlers", [logging.StreamHandler()])
    logs.ensure_request_errors_logged()
    assert added(request_logger) == 0
