"""System checks for Megaphone's settings. Ids are stable: ``megaphone.E001`` means the same
thing in every release (docs/settings.md lists them).

Every setting is checked against its declaration (:data:`megaphone.conf.SETTINGS`: its type,
its limits and its check id), by :func:`invalid_settings`, and the message and hint say what
the declaration wants; the other checks look further into a value of the right type (a backend
URL, permission rules, topic patterns, origins, API keys) or at several settings together.
"""

from __future__ import annotations

import os
import re
from functools import cache
from typing import Any

import msgspec
from django.core.checks import CheckMessage, Error, Warning, register

from megaphone.backends import InvalidBackend, backend_from_url
from megaphone.conf import (
    DEFAULTS,
    SETTINGS,
    Config,
    Setting,
    TopicOptions,
    base_options,
    get_config,
    unknown_keys,
)
from megaphone.core.decoding import explain, invalid_strings
from megaphone.core.topics import MAX_TOPIC_LENGTH
from megaphone.server.origins import parse_pattern

#: What a ``TOPICS`` pattern may hold: topic-name characters and the glob characters ``*?[]!``.
_PATTERN = re.compile(rf"[A-Za-z0-9_.:@=*?\[\]!-]{{1,{MAX_TOPIC_LENGTH}}}")


def _expected(schema: dict[str, Any]) -> str:
    """What a JSON schema (of a setting's declared type) asks for, in words: its
    ``description`` if the declaration gives one."""
    if "description" in schema:
        return str(schema["description"])
    if "anyOf" in schema:
        return " or ".join(_expected(option) for option in schema["anyOf"])
    kind = schema.get("type")
    if kind in ("integer", "number"):
        words = "an integer" if kind == "integer" else "a number"
        bounds = [
            f"{symbol} {schema[key]:g}"
            for key, symbol in (
                ("minimum", ">="),
                ("exclusiveMinimum", ">"),
                ("maximum", "<="),
                ("exclusiveMaximum", "<"),
            )
            if key in schema
        ]
        return " ".join([words, *bounds])
    names = {
        "boolean": "True or False",
        "string": "a string",
        "null": "None",
        "array": "a list",
        "object": "a dict",
    }
    found = names.get(kind, "a value") if isinstance(kind, str) else "a value"
    if kind == "array" and "items" in schema:
        found += f" of {_plural(_expected(schema['items']))}"
    if kind == "object" and "additionalProperties" in schema:
        found += f" of {_plural(_expected(schema['additionalProperties']))}"
    return found


def _plural(words: str) -> str:
    return {"a string": "strings", "a dict": "dicts", "a list of strings": "lists of strings"}.get(
        words, words
    )


@cache
def expected(setting: Setting) -> str:
    """What ``setting``'s declaration asks for, in words: "an integer >= 1", "a number > 0 or
    None", "True or False"..."""
    return _expected(msgspec.json.schema(setting.type))


def invalid_settings(config: Config) -> list[Error]:
    """One error per setting whose value does not have its declared type and limits, with
    the setting's check id; a hint says what is expected, and the default."""
    errors = []
    for name, setting in SETTINGS.items():
        value = getattr(config, name)
        try:
            msgspec.convert(value, setting.type, strict=True)
        except msgspec.ValidationError:
            errors.append(
                Error(
                    f"MEGAPHONE[{name!r}] must be {expected(setting)}, not {value!r}.",
                    hint=f"{name}: {expected(setting)}; by default {setting.default!r} "
                    "(docs/settings.md).",
                    id=setting.check.id,
                )
            )
    return errors


def _valid(config: Config, *names: str) -> bool:
    """Whether these settings have their declared types (the other checks look no further)."""
    for name in names:
        try:
            msgspec.convert(getattr(config, name), SETTINGS[name].type, strict=True)
        except msgspec.ValidationError:
            return False
    return True


def _backend_error(exc: Exception, *, by_path: bool) -> Error:
    """``MEGAPHONE['BACKEND']`` names nothing usable: E005 for a class path, E002 for a URL."""
    if by_path:
        return Error(
            f"MEGAPHONE['BACKEND'] names no usable backend class: {exc}",
            hint="Give 'package.module:ClassName' of a class satisfying "
            "megaphone.backends.Backend (subclass megaphone.backends.BaseBackend for the "
            "defaults), built as ClassName(url, **options); see docs/settings.md.",
            id="megaphone.E005",
        )
    return Error(
        f"MEGAPHONE['BACKEND'] cannot be used: {exc}",
        hint="Use memory:// (one process), redis://host:6379/0, or the path of a backend "
        "class, package.module:ClassName.",
        id="megaphone.E002",
    )


@register("megaphone")
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    errors = []
    for key in unknown_keys():
        errors.append(
            Error(
                f"MEGAPHONE has an unknown key {key!r}.",
                hint="See megaphone.conf.DEFAULTS for the keys and their meaning.",
                id="megaphone.E001",
            )
        )
    config = get_config()
    errors.extend(invalid_settings(config))
    backend = None
    if _valid(config, "BACKEND"):
        try:
            backend = backend_from_url(config.BACKEND)
        except InvalidBackend as exc:
            errors.append(_backend_error(exc, by_path=exc.by_path))
        except (ValueError, ImportError) as exc:
            errors.append(_backend_error(exc, by_path=False))
    if config.PERMISSIONS is not None and _valid(config, "PERMISSIONS"):
        from megaphone.server.permissions import PolicyError, compile_rules

        try:
            compile_rules(config.PERMISSIONS)
        except PolicyError as exc:
            errors.append(
                Error(
                    f"MEGAPHONE['PERMISSIONS'] cannot be used: {exc}",
                    hint="See megaphone.server.permissions for the rule format.",
                    id="megaphone.E010",
                )
            )
    if _valid(config, "TOPICS"):
        errors.extend(check_topics(config.TOPICS))
    workers = int(os.environ.get("MEGAPHONE_WORKERS") or os.environ.get("WEB_CONCURRENCY") or 1)
    if workers > 1 and backend is not None and not backend.crosses_processes:
        errors.append(
            Error(
                f"{workers} worker processes on {backend.name}, a backend that does not cross "
                "processes: a message published in one worker would never reach the clients of "
                "the others.",
                hint="Set REDIS_URL (or MEGAPHONE['BACKEND']) to redis://host:6379/0, "
                "or run one worker.",
                id="megaphone.E004",
            )
        )
    return errors


@register("megaphone")
def check_text(app_configs: Any = None, **kwargs: Any) -> list[Error]:
    """Every string in the settings is valid Unicode (``megaphone.E042``): a lone surrogate,
    from a ``"\\ud800"`` escape or from undecodable bytes in an environment variable (Python
    reads them with ``surrogateescape``), cannot be encoded for Redis, a database or a client."""
    config = get_config()
    return [
        Error(
            f"{where} holds text that is not valid Unicode (a lone surrogate).",
            hint="Fix the setting, or the environment variable it comes from (REDIS_URL, for one):"
            " it must be valid UTF-8.",
            id="megaphone.E042",
        )
        for name in DEFAULTS
        for where in invalid_strings(getattr(config, name), f"MEGAPHONE[{name!r}]")
    ]


@cache
def _options_hint() -> str:
    properties = msgspec.json.schema(TopicOptions)["$defs"]["TopicOptions"]["properties"]
    return "Options: " + "; ".join(f"{n}: {_expected(p)}" for n, p in properties.items()) + "."


def check_topics(topics: tuple[tuple[Any, Any], ...]) -> list[Error]:
    """The patterns (``megaphone.E020``) and options (``megaphone.E021``) of ``TOPICS``, of its
    declared shape already (pairs: :func:`get_config` turns the dict into a tuple of them)."""
    errors = []
    for pattern, options in topics:
        if not isinstance(pattern, str) or not _PATTERN.fullmatch(pattern):
            errors.append(
                Error(
                    f"MEGAPHONE['TOPICS'] has a pattern that matches no valid topic: {pattern!r}.",
                    hint="Use topic characters (A-Z a-z 0-9 _ - . : @ =) and * ? [ ].",
                    id="megaphone.E020",
                )
            )
        if not isinstance(options, dict):
            errors.append(
                Error(
                    f"MEGAPHONE['TOPICS'][{pattern!r}] must be a dict of options.",
                    id="megaphone.E021",
                )
            )
            continue
        try:
            # Over the defaults' (valid) options, as topic_options() puts them.
            msgspec.convert({**base_options(Config()), **options}, TopicOptions, strict=True)
        except msgspec.ValidationError as exc:
            errors.append(
                Error(
                    f"MEGAPHONE['TOPICS'][{pattern!r}]: {explain(exc)[1]}.",
                    hint=_options_hint(),
                    id="megaphone.E021",
                )
            )
    return errors


#: Shortest API key that does not draw warning megaphone.W030.
MIN_API_KEY_LENGTH = 16
_KEY_HINT = "Generate keys with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


@register("megaphone")
def check_publishing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The API keys: not blank (``megaphone.E030``), not short (``megaphone.W030``)."""
    messages: list[CheckMessage] = []
    config = get_config()
    keys = config.API_KEYS if _valid(config, "API_KEYS") else ()
    pairs = list(keys.items()) if isinstance(keys, dict) else [(key, None) for key in keys]
    for key, patterns in pairs:
        if not key.strip() or key != key.strip():
            messages.append(
                Error(
                    "MEGAPHONE['API_KEYS'] holds a key that is empty or has surrounding spaces.",
                    hint=_KEY_HINT,
                    id="megaphone.E030",
                )
            )
            continue
        if patterns is not None and (not patterns or not all(patterns)):
            messages.append(
                Error(
                    f"The topic patterns of API key {key[:4]}... must be a non-empty list of "
                    "strings.",
                    hint='e.g. {"<key>": ["orders.*", "stock"]}; ["*"] allows every topic.',
                    id="megaphone.E030",
                )
            )
        if len(key) < MIN_API_KEY_LENGTH:
            messages.append(
                Warning(
                    f"An API key in MEGAPHONE['API_KEYS'] ({key[:2]}...) is shorter than "
                    f"{MIN_API_KEY_LENGTH} characters: it can be guessed.",
                    hint=_KEY_HINT,
                    id="megaphone.W030",
                )
            )
    return messages


_ORIGIN_HINT = (
    "List full origins, scheme and host (and port if not the default), no path, as in "
    "CSRF_TRUSTED_ORIGINS: e.g. ['https://app.example.com', 'https://*.example.com', "
    "'http://localhost:3000']."
)


@register("megaphone")
def check_request_guards(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Each of ``ALLOWED_ORIGINS`` is a full origin (``megaphone.E040``), not ``*``
    (``megaphone.W040``); ``MAX_REQUEST_BODY`` lets HTTP API bodies through (``megaphone.W041``)."""
    messages: list[CheckMessage] = []
    config = get_config()
    origins = config.ALLOWED_ORIGINS if _valid(config, "ALLOWED_ORIGINS") else ()
    if "*" in origins:
        messages.append(
            Warning(
                "MEGAPHONE['ALLOWED_ORIGINS'] has '*': a page on any site can open a "
                "WebSocket with your users' cookies and read what they may read.",
                hint="List the origins of your pages instead. " + _ORIGIN_HINT,
                id="megaphone.W040",
            )
        )
    for origin in origins:
        if origin != "*" and parse_pattern(origin) is None:
            messages.append(
                Error(
                    f"MEGAPHONE['ALLOWED_ORIGINS'] has {origin!r}, which is not a full origin.",
                    hint=_ORIGIN_HINT,
                    id="megaphone.E040",
                )
            )
    limit = config.MAX_REQUEST_BODY
    if (
        _valid(config, "MAX_REQUEST_BODY", "API_MAX_BODY_SIZE")
        and limit is not None
        and limit < config.API_MAX_BODY_SIZE
    ):
        messages.append(
            Warning(
                f"MEGAPHONE['API_MAX_BODY_SIZE'] ({config.API_MAX_BODY_SIZE}) is over "
                f"MAX_REQUEST_BODY ({limit}): HTTP API bodies between the two are refused "
                "(413) before the API sees them.",
                hint="Raise MAX_REQUEST_BODY, or lower API_MAX_BODY_SIZE to it.",
                id="megaphone.W041",
            )
        )
    return messages


@register("megaphone")
def check_rate_limits(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """A reconnecting client can resubscribe all its topics (``megaphone.W050``)."""
    messages: list[CheckMessage] = []
    config = get_config()
    valid = _valid(config, "SUBSCRIBE_RATE", "SUBSCRIBE_BURST", "MAX_SUBSCRIPTIONS")
    subscriptions = config.MAX_SUBSCRIPTIONS
    if valid and config.SUBSCRIBE_RATE and subscriptions > config.SUBSCRIBE_BURST:
        messages.append(
            Warning(
                f"MEGAPHONE['SUBSCRIBE_BURST'] ({config.SUBSCRIBE_BURST}) is below "
                f"MAX_SUBSCRIPTIONS ({subscriptions}): a client resubscribing to all its "
                "topics after a reconnect would get rate_limited.",
                hint="Set SUBSCRIBE_BURST to at least MAX_SUBSCRIPTIONS.",
                id="megaphone.W050",
            )
        )
    return messages


@register("megaphone")
def check_uvicorn_protocols(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``manage.py serve`` and ``runserver`` run Megaphone's uvicorn protocols only where the
    installed uvicorn still has the internals they rely on (megaphone.server.uvicorn_contract);
    one warning says what was lost otherwise."""
    from megaphone.server.uvicorn_contract import CONTRACTS, problems, protocols

    broken = problems()
    ours = {contract.ours for contract in CONTRACTS}
    if not broken:
        return []
    missing = "; ".join(item for items in broken.values() for item in items)
    stock = " and ".join(
        f"{option}={name!r}" for option, name in protocols().items() if name not in ours
    )
    lost = "; ".join(c.lost for c in CONTRACTS if c.ours in broken)
    return [
        Warning(
            f"The installed uvicorn lacks internals Megaphone's protocols rely on ({missing}). "
            f"manage.py serve and runserver run uvicorn's stock protocol ({stock}) instead, "
            f"without {lost}.",
            hint="Install a uvicorn in the range pyproject.toml declares for django-megaphone.",
            id="megaphone.W060",
        )
    ]


#: Apps whose ``runserver`` serves an ASGI application's WebSockets.
WEBSOCKET_RUNSERVERS = ("megaphone", "daphne")


@register("megaphone")
def check_runserver(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """While ``DEBUG`` is on, ``manage.py runserver`` should be one that serves WebSockets: Django
    runs the command of the first installed app that has one (megaphone.W061)."""
    from django.apps import apps
    from django.conf import settings
    from django.core.management import find_commands

    if not settings.DEBUG:
        return []
    for app in apps.get_app_configs():
        if "runserver" in find_commands(os.path.join(app.path, "management")):
            if app.name in WEBSOCKET_RUNSERVERS:
                return []
            return [
                Warning(
                    f"manage.py runserver serves no WebSocket: it is the command of "
                    f"{app.name!r}, which comes before 'megaphone' in INSTALLED_APPS.",
                    hint="Put 'megaphone' first in INSTALLED_APPS (before "
                    "'django.contrib.staticfiles'), or use manage.py serve --reload.",
                    id="megaphone.W061",
                )
            ]
    return []
