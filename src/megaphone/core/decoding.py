"""The strict decoding boundary: text that is not valid Unicode is refused where it enters.

Everything Megaphone takes from outside passes through here: JSON (protocol frames, HTTP API
bodies), WebSocket text, query strings, Python-side payloads and ``msg_id``s, settings. Valid
Unicode means what UTF-8 can encode: a Python ``str`` holding a lone surrogate (U+D800..U+DFFF,
which Python's :mod:`json` decodes from an escape such as ``"\\ud800"``, and ``surrogateescape``
makes of undecodable bytes) is refused, so nothing invalid ever reaches the hub, history, a
backend, a log or another client, and every encoding further on can be strict.

JSON is decoded by msgspec, which refuses invalid UTF-8, lone surrogate escapes, ``NaN`` and
``Infinity`` by construction (no check bolted on after a lenient decoder). Each refusal raises
:class:`InvalidText` (a :class:`ValueError`) with a message that says what was wrong; the callers
turn it into their documented error (protocol ``bad_request``, HTTP 400, ``InvalidMessage``,
close 1007, a system check).

Pure: no Django, no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qsl

import msgspec

__all__ = [
    "InvalidText",
    "check_text",
    "decode_json",
    "encode_json",
    "explain",
    "invalid_strings",
    "strict_query",
    "utf8_size",
]

_decode = msgspec.json.decode
_encode = msgspec.json.encode


class InvalidText(ValueError):
    """Input that is not valid JSON or not valid Unicode; the message says which and where."""


def _surrogate(text: str, error: UnicodeEncodeError) -> str:
    return f"a lone surrogate U+{ord(text[error.start]):04X} at character {error.start}"


def decode_json(data: str | bytes) -> Any:
    """The JSON value of ``data`` (UTF-8 bytes, or text). Refuses invalid JSON, invalid UTF-8,
    escapes of lone surrogates, ``NaN``/``Infinity`` and numbers out of a float's range."""
    try:
        return _decode(data)
    except msgspec.DecodeError as exc:  # includes msgspec.ValidationError (numbers out of range)
        raise InvalidText(f"not valid JSON or not valid Unicode: {exc}") from None
    except UnicodeEncodeError as exc:  # text that UTF-8 cannot hold
        assert isinstance(data, str)
        raise InvalidText(f"not valid Unicode: {_surrogate(data, exc)}") from None
    except RecursionError:
        raise InvalidText("not valid JSON: nested too deeply") from None


def encode_json(value: Any) -> str:
    """The compact JSON text of a value :func:`decode_json` returned (UTF-8, no ASCII
    escaping), as :mod:`json` writes it with ``separators=(",", ":")``."""
    return _encode(value).decode()


_WHERE = re.compile(r"^(.*?)(?: - at `\$((?:\.\w+|\[\d+\])*)`)?$", re.DOTALL)
_MISSING = re.compile(r"^Object missing required field `(\w+)`$")


def explain(error: msgspec.ValidationError) -> tuple[str, str]:
    """``(where, message)`` of a value a msgspec declaration refused: ``where`` is the path of
    the refused field (``"since.offset"``, ``"messages[1].topic"``; ``""`` for the value
    itself) and ``message`` says what was wrong, naming the field (``"since.epoch is
    missing"``, ``"msg_id: Expected `str` of length <= 64"``)."""
    match = _WHERE.match(str(error))
    what, where = (match.group(1), (match.group(2) or "").lstrip(".")) if match else ("", "")
    missing = _MISSING.match(what)
    if missing:
        where = f"{where}.{missing.group(1)}" if where else missing.group(1)
        return where, f"{where} is missing"
    return where, (f"{where}: {what}" if where else what)[:200]


def utf8_size(text: str | bytes) -> int:
    """Size of ``text`` on the wire, in bytes: UTF-8 encoded for a ``str`` (:class:`InvalidText`
    if UTF-8 cannot encode it), as it is for ``bytes``. Free for bytes and ASCII text (Python
    knows a string is ASCII without scanning it)."""
    if isinstance(text, bytes) or text.isascii():
        return len(text)
    try:
        return len(text.encode())
    except UnicodeEncodeError as exc:
        raise InvalidText(f"not valid Unicode: {_surrogate(text, exc)}") from None


def check_text(text: str, what: str) -> str:
    """Return ``text`` if it is valid Unicode, else raise :class:`InvalidText` naming ``what``."""
    try:
        utf8_size(text)
    except InvalidText as exc:
        raise InvalidText(f"{what} is {exc}") from None
    return text


def strict_query(query_string: str) -> list[tuple[str, str]]:
    """The ``(name, value)`` pairs of a URL query string, percent-decoded as strict UTF-8.

    Django's ``request.GET`` replaces undecodable escapes (``%FF``, ``%ED%A0%80``) with U+FFFD;
    this refuses them instead (:class:`InvalidText`), so that a value is never silently altered.
    """
    try:
        pairs = parse_qsl(query_string, keep_blank_values=True, errors="strict")
    except UnicodeDecodeError:
        raise InvalidText("the query string is not valid UTF-8 once percent-decoded") from None
    for name, value in pairs:
        check_text(name, "a query parameter name")
        check_text(value, f"query parameter {name!r}")
    return pairs


def invalid_strings(value: object, path: str) -> Iterator[str]:
    """The paths (``path``, then ``path[key]``...) of the strings in ``value`` (dicts, lists,
    tuples, sets, keys included) that are not valid Unicode: for the settings' system check."""
    if isinstance(value, str):
        try:
            utf8_size(value)
        except InvalidText:
            yield path
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from invalid_strings(key, f"{path} (a key)")
            yield from invalid_strings(item, f"{path}[{key!r}]")
    elif isinstance(value, list | tuple | set | frozenset):
        for index, item in enumerate(value):
            yield from invalid_strings(item, f"{path}[{index}]")
