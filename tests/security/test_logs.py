"""Class 7, logs an operator can trust: an unknown WebSocket path is refused (403) with one log
line and no traceback; no client-controlled value (path, topic, Origin, header) forges a line,
ends one, or carries a terminal escape; a secret in the query is never logged in clear, however
it is percent-encoded; an unhandled error (HTTP 500) is logged with its traceback."""

from __future__ import annotations

import json
from urllib.error import HTTPError
from urllib.request import urlopen

import pytest
from websockets.sync.client import connect

from tests.conftest import TRANSPORT, ServerProcess, create_superuser, timeout, wait_for_log
from tests.e2e.rawws import RawClient
from tests.e2e.test_logout import Browser

from .conftest import Start

#: What an attacker wants to see at the start of a line of the log.
FORGED = "FORGED CRITICAL root: the attacker wrote this line"


def handshake_status(server: ServerProcess, path: str, **headers: str) -> int:
    """The HTTP status of a WebSocket handshake for the raw ``path``, with those headers (Host
    is ``127.0.0.1:<port>`` unless given)."""
    fields = {
        "Host": f"127.0.0.1:{server.port}",
        "Upgrade": "websocket",
        "Connection": "Upgrade",
        "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version": "13",
        **headers,
    }
    head = "".join(f"{name}: {value}\r\n" for name, value in fields.items())
    with RawClient(server.port) as client:
        client.send(f"GET {path} HTTP/1.1\r\n{head}\r\n".encode("latin-1"))
        answer = client.sock.recv(4096)
    return int(answer.split(b" ", 2)[1])


def log_after_sentinel(server: ServerProcess) -> str:
    """The server's log once it logged a last handshake, refused (an invalid topic) by the code
    before the fixes as after: everything logged for the handshakes before it is in."""
    assert handshake_status(server, "/ws/broadcast/sentinel$/") == 403
    return wait_for_log(server, "/ws/broadcast/sentinel$/")


def lines_between(log: str, start: str, end: str) -> list[str]:
    """The lines of ``log`` after the last line holding ``start`` up to the first holding
    ``end`` after it (both included)."""
    lines = log.splitlines()
    first = max(i for i, line in enumerate(lines) if start in line)
    last = next(i for i in range(first, len(lines)) if end in lines[i])
    return lines[first : last + 1]


def test_an_unknown_websocket_path_is_a_403_with_one_log_line(attacked: Start) -> None:
    server = attacked()
    for path in ("/ws/nope/", "/ws/", "/ws/broadcast/a/b/", "/nothing-here"):
        assert handshake_status(server, path) == 403, path
    # A last refusal closes the window: everything the server logged for the attacks is before it.
    assert handshake_status(server, "/ws/sentinel/") == 403
    log = wait_for_log(server, "refused WebSocket handshake on /ws/sentinel/: no such endpoint")
    assert "Traceback" not in log and "No route found" not in log
    # One line per handshake, Megaphone's, with the reason (uvicorn's own line is dropped).
    window = lines_between(log, "/ws/nope/", "/ws/sentinel/")
    assert [line.partition(" megaphone.routing: ")[2] for line in window] == [
        f"refused WebSocket handshake on {path}: no such endpoint"
        for path in ("/ws/nope/", "/ws/", "/ws/broadcast/a/b/", "/nothing-here", "/ws/sentinel/")
    ]


@pytest.mark.parametrize(
    "hostile",
    [
        "%0a",  # LF
        "%0d%0a",  # CR LF
        "%0d",  # CR alone: a terminal rewrites the line
        "%1b[2K%1b[1G",  # ANSI: erase the line, back to column 1
        "%e2%80%a8",  # U+2028 LINE SEPARATOR
        "%c2%85",  # U+0085 NEXT LINE
    ],
)
def test_no_client_value_forges_a_log_line(attacked: Start, hostile: str) -> None:
    server = attacked()
    forged = FORGED.replace(" ", "%20")
    c1 = "\x9b2K\x85"
    statuses = [
        # A raw endpoint's topic (invalid: refused), an unknown path (refused).
        handshake_status(server, f"/ws/broadcast/a{hostile}{forged}/"),
        handshake_status(server, f"/ws/x{hostile}{forged}/"),
        # An Origin and a Host header: a foreign Origin is refused and logged with both values.
        # HTTP allows no C0 control in a header (the server answers 400), but bytes over 0x7f
        # pass: the 8-bit CSI (0x9b, an ANSI escape) and NEL (0x85, a line break to some).
        handshake_status(server, "/ws/connect/", Origin=f"http://evil{c1}.com"),
        handshake_status(server, "/ws/connect/", Host=f"h{c1}", Origin="http://h"),
    ]
    # A frame of the JSON protocol naming a hostile topic (refused with an error frame).
    with connect(f"{server.ws_url}/ws/connect/") as client:
        client.recv(timeout=timeout(5))
        topic = f"a\n{FORGED}\r\x1b[2K\u2028"
        client.send(json.dumps({"op": "subscribe", "id": 1, "topic": topic}))
        assert json.loads(client.recv(timeout=timeout(5)))["type"] == "error"
    log = log_after_sentinel(server)
    for line in log.split("\n"):
        assert not line.startswith(FORGED), line
        assert not line.startswith("FORGED"), line
    for character in ("\r", "\x1b", "\x9b", "\u2028", "\x85"):
        assert character not in log, f"{character!r} reached the log"
    assert "evil" in log  # the Origin was logged, escaped
    assert statuses == [403, 403, 403, 403]


def test_a_token_is_never_logged_however_the_query_encodes_it(attacked: Start) -> None:
    server = attacked()
    create_superuser(server, "alice")
    alice = Browser(server)
    alice.log_in("alice")
    token = alice.token()
    for query in (
        f"token={token}",
        f"%74oken={token}",  # the name percent-encoded: decoded, it is "token"
        f"a=1&%54OKEN={token}&b=2",
        f"to%6Ben={token}",
        f"api_key={token}",
    ):
        with connect(f"{server.ws_url}/ws/connect/?{query}") as client:
            client.recv(timeout=timeout(5))
    # A refused (tampered) token, and an HTTP request carrying it.
    assert handshake_status(server, f"/ws/connect/?%74oken={token}x") in (101, 403)
    with pytest.raises(HTTPError) as refused:
        urlopen(f"{server.http_url}/api/topics?%74oken={token}", timeout=timeout(10))
    refused.value.close()
    log = log_after_sentinel(server)
    # uvicorn's lines for the handshakes show their query, redacted; the native transport logs
    # no line per handshake, and none with a query.
    assert ("[redacted]" in log) == (TRANSPORT == "asgi")
    assert token not in log
    assert token.rsplit(":", 1)[-1] not in log  # not even its signature


def test_an_http_500_is_logged_with_its_traceback(attacked: Start) -> None:
    server = attacked(env={"DJANGO_SETTINGS_MODULE": "tests.security.failing_view_settings"})
    with pytest.raises(HTTPError) as failed:
        urlopen(f"{server.http_url}/boom/", timeout=timeout(10))
    assert failed.value.code == 500
    failed.value.close()
    log = wait_for_log(server, "Boom: a view failed on purpose")
    assert "Internal Server Error: /boom/" in log
    assert "Traceback (most recent call last)" in log
    assert log.count("Boom: a view failed on purpose") == 1  # once, not twice
