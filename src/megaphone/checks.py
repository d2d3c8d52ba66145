"""System checks for Megaphone's settings. Ids are stable: ``megaphone.E001`` means the same
thing in every release."""

from __future__ import annotations

import os
import re
from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register

from megaphone.backends import backend_from_url
from megaphone.conf import DEFAULTS, TOPIC_OPTION_TYPES, get_config, unknown_keys
from megaphone.core.decoding import invalid_strings
from megaphone.server.origins import parse_pattern

#: What a ``TOPICS`` pattern may hold: topic-name characters and the glob characters ``*?[]!``.
_PATTERN = re.compile(r"[A-Za-z0-9_.:@=*?\[\]!-]{1,200}")


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
    try:
        backend_from_url(config.BACKEND)
    except (ValueError, ImportError) as exc:
        errors.append(
            Error(
                f"MEGAPHONE['BACKEND'] cannot be used: {exc}",
                hint="Use memory:// (one process) or redis://host:6379/0.",
                id="megaphone.E002",
            )
        )
    for key in (
        "MAX_MESSAGE_SIZE",
        "OUTBOX_MAX_MESSAGES",
        "OUTBOX_MAX_BYTES",
        "HISTORY_SIZE",
        "HISTORY_MAX_BYTES",
        "RECOVERY_MAX_MESSAGES",
        "MAX_SUBSCRIPTIONS",
    ):
        value = getattr(config, key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            errors.append(
                Error(
                    f"MEGAPHONE[{key!r}] must be a positive integer, not {value!r}.",
                    id="megaphone.E003",
                )
            )
    heartbeat = config.SSE_HEARTBEAT
    if not isinstance(heartbeat, int | float) or isinstance(heartbeat, bool) or not heartbeat > 0:
        errors.append(
            Error(
                f"MEGAPHONE['SSE_HEARTBEAT'] must be a positive number of seconds, "
                f"not {heartbeat!r}.",
                hint="The default is 15; keep it below your proxy's read timeout.",
                id="megaphone.E060",
            )
        )
    if config.PERMISSIONS is not None:
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
    errors.extend(check_topics(config.TOPICS))
    workers = int(os.environ.get("MEGAPHONE_WORKERS") or os.environ.get("WEB_CONCURRENCY") or 1)
    if workers > 1 and config.BACKEND.startswith("memory:"):
        errors.append(
            Error(
                f"{workers} worker processes with the in-memory backend: a message published in "
                "one worker would never reach the clients of the others.",
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


def check_topics(topics: object) -> list[Error]:
    """``TOPICS``: a dict of glob pattern -> options (``megaphone.E020``, ``megaphone.E021``)."""
    if not isinstance(topics, tuple):  # get_config() turns a dict into a tuple of pairs
        return [
            Error(
                f"MEGAPHONE['TOPICS'] must be a dict of pattern -> options, not {topics!r}.",
                hint='e.g. {"chat.*": {"history_size": 100, "presence": True}}',
                id="megaphone.E020",
            )
        ]
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
        for name, value in options.items():
            expected = TOPIC_OPTION_TYPES.get(name)
            if expected is None:
                errors.append(
                    Error(
                        f"MEGAPHONE['TOPICS'][{pattern!r}] has an unknown option {name!r}.",
                        hint="Options: " + ", ".join(TOPIC_OPTION_TYPES) + ".",
                        id="megaphone.E021",
                    )
                )
            elif (
                not isinstance(value, expected)
                or (isinstance(value, bool) and expected is not bool)
                or (name in ("history_size", "history_ttl") and value < 0)
            ):
                errors.append(
                    Error(
                        f"MEGAPHONE['TOPICS'][{pattern!r}][{name!r}] has a wrong value {value!r}.",
                        hint="history_size: an integer >= 0; history_ttl: seconds >= 0; "
                        "the others: True or False.",
                        id="megaphone.E021",
                    )
                )
    return errors


#: Shortest API key that does not draw warning megaphone.W030.
MIN_API_KEY_LENGTH = 16
_KEY_HINT = "Generate keys with: python -c 'import secrets; print(secrets.token_urlsafe(32))'"


@register("megaphone")
def check_publishing(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """The settings of server-side publishing and of the HTTP API."""
    messages: list[CheckMessage] = []
    config = get_config()
    keys = config.API_KEYS
    pairs = list(keys.items()) if isinstance(keys, dict) else [(key, None) for key in keys]
    for key, patterns in pairs:
        if not isinstance(key, str) or not key.strip() or key != key.strip():
            messages.append(
                Error(
                    "MEGAPHONE['API_KEYS'] holds a key that is not a non-empty string without "
                    "surrounding spaces.",
                    hint=_KEY_HINT,
                    id="megaphone.E030",
                )
            )
            continue
        if patterns is not None and (
            not patterns or not all(isinstance(p, str) and p for p in patterns)
        ):
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
    for name in ("API_BATCH_MAX", "API_MAX_BODY_SIZE", "API_RATE_BURST"):
        value = getattr(config, name)
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            messages.append(
                Error(
                    f"MEGAPHONE[{name!r}] must be a positive integer, not {value!r}.",
                    id="megaphone.E031",
                )
            )
    for name, optional in (("PUBLISH_TIMEOUT", False), ("API_RATE_LIMIT", True)):
        value = getattr(config, name)
        if optional and value is None:
            continue
        if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
            messages.append(
                Error(
                    f"MEGAPHONE[{name!r}] must be a positive number"
                    f"{' or None' if optional else ''}, not {value!r}.",
                    id="megaphone.E031",
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
    """``ALLOWED_ORIGINS`` (``megaphone.E040``, ``megaphone.W040``) and ``MAX_REQUEST_BODY``
    (``megaphone.E041``, ``megaphone.W041``)."""
    messages: list[CheckMessage] = []
    config = get_config()
    origins = config.ALLOWED_ORIGINS
    if not isinstance(origins, tuple):
        messages.append(
            Error(
                f"MEGAPHONE['ALLOWED_ORIGINS'] must be a list of origins, not {origins!r}.",
                hint=_ORIGIN_HINT,
                id="megaphone.E040",
            )
        )
    else:
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
            if origin != "*" and (not isinstance(origin, str) or parse_pattern(origin) is None):
                messages.append(
                    Error(
                        f"MEGAPHONE['ALLOWED_ORIGINS'] has {origin!r}, which is not a full origin.",
                        hint=_ORIGIN_HINT,
                        id="megaphone.E040",
                    )
                )
    limit = config.MAX_REQUEST_BODY
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit < 1):
        messages.append(
            Error(
                f"MEGAPHONE['MAX_REQUEST_BODY'] must be a positive integer or None, not {limit!r}.",
                id="megaphone.E041",
            )
        )
    elif (
        limit is not None
        and isinstance(config.API_MAX_BODY_SIZE, int)
        and (limit < config.API_MAX_BODY_SIZE)
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
    """The token buckets of each WebSocket connection: publishing, and subscribing."""
    messages: list[CheckMessage] = []
    config = get_config()
    valid = True
    for rate_name, burst_name in (
        ("PUBLISH_RATE", "PUBLISH_BURST"),
        ("SUBSCRIBE_RATE", "SUBSCRIBE_BURST"),
    ):
        rate, burst = getattr(config, rate_name), getattr(config, burst_name)
        if not isinstance(rate, int | float) or isinstance(rate, bool) or not rate >= 0:
            valid = False
            messages.append(
                Error(
                    f"MEGAPHONE[{rate_name!r}] must be a number of requests per second, 0 for "
                    f"no limit, not {rate!r}.",
                    id="megaphone.E050",
                )
            )
        if not isinstance(burst, int) or isinstance(burst, bool) or burst < 1:
            valid = False
            messages.append(
                Error(
                    f"MEGAPHONE[{burst_name!r}] must be a positive integer, not {burst!r}.",
                    id="megaphone.E050",
                )
            )
    subscriptions = config.MAX_SUBSCRIPTIONS
    if (
        valid
        and config.SUBSCRIBE_RATE
        and isinstance(subscriptions, int)
        and subscriptions > config.SUBSCRIBE_BURST
    ):
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
def check_join_leave(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """``JOIN_LEAVE_INTERVAL``: a number of seconds, 0 or more (``megaphone.E012``)."""
    value = get_config().JOIN_LEAVE_INTERVAL
    if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
        return []
    return [
        Error(
            f"MEGAPHONE['JOIN_LEAVE_INTERVAL'] must be a number of seconds, 0 or more, "
            f"not {value!r}.",
            hint="e.g. 1.0: a topic's join/leave events go out at most once a second.",
            id="megaphone.E012",
        )
    ]


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
