"""A Django session over HTTP (log in, log out, get a connection token, open its WebSockets), for
the end-to-end tests of authentication."""

from __future__ import annotations

import json
import re
from http.cookiejar import CookieJar
from urllib.parse import urlencode
from urllib.request import HTTPCookieProcessor, OpenerDirector, Request, build_opener

from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from tests.conftest import ServerProcess, timeout

PASSWORD = "a-long-test-password"


class Browser:
    """An HTTP client with its own cookie jar: one Django session."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.jar = CookieJar()
        self.opener: OpenerDirector = build_opener(HTTPCookieProcessor(self.jar))

    def cookie(self, name: str) -> str:
        return next(c.value for c in self.jar if c.name == name and c.value is not None)

    def post(self, path: str, fields: dict[str, str]) -> None:
        body = urlencode({**fields, "csrfmiddlewaretoken": self.cookie("csrftoken")}).encode()
        self.opener.open(Request(f"{self.server.http_url}{path}", data=body), timeout=10).read()

    def log_in(self, username: str) -> None:
        page = self.opener.open(f"{self.server.http_url}/admin/login/", timeout=10).read()
        assert re.search(rb"csrfmiddlewaretoken", page)
        self.post("/admin/login/?next=/admin/", {"username": username, "password": PASSWORD})
        assert self.cookie("sessionid")

    def log_out(self) -> None:
        self.post("/admin/logout/", {})

    def token(self) -> str:
        answer = self.opener.open(f"{self.server.http_url}/api/token", timeout=10)
        return json.loads(answer.read())["token"]

    def websocket(self, path: str) -> ClientConnection:
        cookie = f"sessionid={self.cookie('sessionid')}"
        return connect(f"{self.server.ws_url}{path}", additional_headers={"Cookie": cookie})


def close_code(socket: ClientConnection) -> int | None:
    """Read until the server closes ``socket``; its close code."""
    try:
        while True:
            socket.recv(timeout=timeout(5))
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
