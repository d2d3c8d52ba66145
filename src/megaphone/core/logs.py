"""What Megaphone writes to the log: escaped, redacted, and no error lost.

Guarantees, for every logger obtained with :func:`get_logger` (all of Megaphone's) and for the
server loggers of :data:`SERVER_LOGGERS` once :func:`install_server_log_filters` ran (Megaphone's
app config runs it at start-up, whatever the ASGI server):

* **One line per record.** Every argument of a record (a path, a topic, an Origin, a header, a
  user name, an exception's text) is escaped by :func:`escape`: control characters (CR, LF, ESC
  and the rest of C0 and C1, DEL), Unicode line and paragraph separators, bidirectional overrides
  and lone surrogates become ``\\xNN`` / ``\\uNNNN``, and a backslash becomes ``\\\\``; so no
  client can end a line, forge one, or colour a terminal. Each value is cut to
  :data:`MAX_VALUE_CHARS` characters. Numbers pass unchanged. (A traceback's own lines, under
  ``exc_info``, are the formatter's; Megaphone's exception messages quote client values with
  ``repr``.)
* **No secret in clear.** In every argument, the query string of a URL (the part after ``?``) has
  the value of each secret parameter (:data:`SECRET_PARAMETERS`) replaced by ``[redacted]``; the
  parameter's name is percent-decoded first, as the server decodes it (``?%74oken=`` is
  ``token``), and matched regardless of case.
* **Refusals logged once.** :func:`log_refusal` logs why a WebSocket handshake is refused and
  marks the request's context, so that the server's own line for the same refusal (uvicorn's
  ``"WebSocket /path" 403``) is dropped: one line per refused handshake, with its reason.
* **Server errors reach stderr.** :func:`ensure_request_errors_logged` sends ``django.request``
  errors (HTTP 500, with their traceback) to stderr when the project's ``LOGGING`` leaves them to
  Django's default, which writes them nowhere but ``mail_admins`` when ``DEBUG`` is off.
"""

from __future__ import annotations

import contextvars
import logging
import re
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import unquote_plus

#: Longest text of one value in a log line; longer ones end with ``...[N chars]``.
MAX_VALUE_CHARS = 300
#: Query parameters whose values are never logged (names compared decoded and lower-cased).
SECRET_PARAMETERS = frozenset(
    {
        "token",
        "access_token",
        "api_key",
        "apikey",
        "key",
        "authorization",
        "password",
        "secret",
        "sessionid",
        "csrfmiddlewaretoken",
    }
)
#: Loggers of ASGI and development servers whose lines carry paths and query strings.
SERVER_LOGGERS = ("uvicorn.error", "uvicorn.access", "django.server", "django.channels.server")
REDACTED = "[redacted]"

# C0 and C1 controls, DEL, the backslash, Unicode line/paragraph separators, bidi controls
# and lone surrogates (which a log handler could not even encode).
_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f\\\\\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069\ud800-\udfff]"
)
# A query string inside a logged value: from "?" to the first space or quote.
_QUERY = re.compile(r"\?([^\s\"'#]*)")

_refusal_logged: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "megaphone_refusal_logged", default=False
)


def _escape_char(match: re.Match[str]) -> str:
    char = match.group()
    if char == "\\":
        return "\\\\"
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape(text: str, limit: int = MAX_VALUE_CHARS) -> str:
    """``text`` safe for one log line: unsafe characters escaped, at most ``limit`` characters
    of it kept (see the module docstring)."""
    if len(text) > limit:
        text = f"{text[:limit]}...[{len(text)} chars]"
    return _UNSAFE.sub(_escape_char, text)


def _is_secret(name: str) -> bool:
    for _ in range(3):  # as decoded once (the server's way), and twice, in case
        decoded = unquote_plus(name, errors="replace")
        if decoded.strip().lower() in SECRET_PARAMETERS:
            return True
        if decoded == name:
            return False
        name = decoded
    return False


def redact_query(query: str) -> str:
    """``query`` (``a=1&token=x``, raw) with the value of every secret parameter redacted."""
    pairs = query.split("&")
    for index, pair in enumerate(pairs):
        name, sep, _ = pair.partition("=")
        if _is_secret(name):
            pairs[index] = f"{name}={REDACTED}" if sep else name
    return "&".join(pairs)


def redact_urls(text: str) -> str:
    """``text`` with the secret parameters of every query string in it redacted."""
    if "?" not in text:
        return text
    return _QUERY.sub(lambda match: "?" + redact_query(match.group(1)), text)


def safe(value: object) -> str:
    """The text of ``value`` as a log line may show it: redacted, then escaped."""
    return escape(redact_urls(str(value)))


class _Safe:
    """A record argument that formats, with ``%s`` or ``%r``, as its safe text."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value

    def __str__(self) -> str:
        return safe(self.value)

    def __repr__(self) -> str:
        return escape(redact_urls(repr(self.value)))


def _safe_arg(value: object) -> object:
    if value is None or isinstance(value, int | float):
        return value  # %d, %x, %f need a number, and a number cannot forge a line
    return _Safe(value)


class SafeArguments(logging.Filter):
    """Makes every argument of a record safe (see the module docstring). With
    ``drop_logged_refusals``, it also drops a server's line for a handshake refusal that
    :func:`log_refusal` has logged already."""

    def __init__(self, *, drop_logged_refusals: bool = False) -> None:
        super().__init__()
        self.drop_logged_refusals = drop_logged_refusals

    def filter(self, record: logging.LogRecord) -> bool:
        if self.drop_logged_refusals and _refusal_logged.get() and _is_handshake_line(record):
            return False
        args = record.args
        if isinstance(args, tuple):
            record.args = tuple(_safe_arg(arg) for arg in args)
        elif isinstance(args, Mapping):
            record.args = {key: _safe_arg(value) for key, value in args.items()}
        return True


def _is_handshake_line(record: logging.LogRecord) -> bool:
    # uvicorn: '%s - "WebSocket %s" 403' (a refusal) or '%s - "WebSocket %s" %d' (a status).
    return isinstance(record.msg, str) and '"WebSocket %s"' in record.msg


def get_logger(name: str) -> logging.Logger:
    """``logging.getLogger(name)``, with :class:`SafeArguments` on it (once)."""
    logger = logging.getLogger(name)
    if not any(isinstance(f, SafeArguments) for f in logger.filters):
        logger.addFilter(SafeArguments())
    return logger


class ServerNoise(logging.Filter):
    """Lines of uvicorn's error log that say nothing an operator can use, once per client:

    * uvicorn logs a whole traceback for every text message that is not UTF-8, so any client
      could flood the log with them; Megaphone's uvicorn protocol
      (``megaphone.server.uvicorn.WebSocketProtocol.handle_parser_exception``) logs one line for
      that close (1007) instead;
    * ``websockets`` logs "connection open" and "connection closed", with no client, path or
      code, for every connection (uvicorn's ``[accepted]`` line and Megaphone's ``closed ...:
      code N`` line say who and why). At 1,000 connections per second they were half the log.
      Likewise its "connection rejected (403 Forbidden)" for every refused handshake (Megaphone's
      refusal line, or uvicorn's ``"WebSocket /path" 403``, says which and why).
    """

    NOISE = frozenset(
        {
            "Invalid UTF-8 sequence received from client.",
            "connection open",
            "connection closed",
            "connection rejected (%d %s)",
        }
    )

    def filter(self, record: logging.LogRecord) -> bool:
        return record.msg not in self.NOISE


def install_server_log_filters() -> None:
    """Put :class:`SafeArguments` on the loggers of :data:`SERVER_LOGGERS`, and
    :class:`ServerNoise` on uvicorn's error log; idempotent. Megaphone's app config calls it at
    start-up (importing a module installs nothing)."""
    for name in SERVER_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(f, SafeArguments) for f in logger.filters):
            logger.addFilter(SafeArguments(drop_logged_refusals=True))
    uvicorn_errors = logging.getLogger("uvicorn.error")
    if not any(isinstance(f, ServerNoise) for f in uvicorn_errors.filters):
        uvicorn_errors.addFilter(ServerNoise())


def log_refusal(logger: logging.Logger, scope: Mapping[str, Any], reason: str) -> None:
    """Log, once, that the WebSocket handshake of ``scope`` is refused and why (WARNING), and
    mark this request's context so that the server does not log the refusal a second time."""
    logger.warning("refused WebSocket handshake on %s: %s", scope.get("path"), reason)
    _refusal_logged.set(True)


class _RequestErrorsToStderr(logging.StreamHandler):  # type: ignore[type-arg]
    """The handler :func:`ensure_request_errors_logged` adds (a class of its own, so that it is
    recognised and added once)."""


def ensure_request_errors_logged() -> None:
    """Log ``django.request`` errors (HTTP 500 and their traceback) to stderr, unless the
    project configures the ``django``, ``django.request`` or root logger itself, or has
    ``LOGGING_CONFIG = None``, or a root handler exists already. While ``DEBUG`` is on, Django's
    own console handler prints them, so this handler stays quiet then (no line twice).
    Idempotent; call it again after a ``django.setup()`` that reconfigured logging (which drops
    the handlers of the ``django`` logger's children): :func:`megaphone.asgi.application` does."""
    from django.conf import settings
    from django.utils.log import RequireDebugFalse

    if settings.LOGGING_CONFIG is None or logging.getLogger().handlers:
        return
    config = settings.LOGGING or {}
    loggers = set(config.get("loggers", {}))
    if "root" in config or loggers & {"", "root", "django", "django.request"}:
        return
    target = logging.getLogger("django.request")
    if any(isinstance(handler, _RequestErrorsToStderr) for handler in target.handlers):
        return
    handler = _RequestErrorsToStderr(sys.stderr)
    handler.setLevel(logging.ERROR)
    handler.addFilter(RequireDebugFalse())
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    target.addHandler(handler)
