"""System checks for Megaphone's settings. Ids are stable: ``megaphone.E001`` means the same
thing in every release."""

from __future__ import annotations

import os
import re
from typing import Any

from django.core.checks import CheckMessage, Error, Warning, register

from .backends import backend_from_url
from .conf import TOPIC_OPTION_TYPES, get_config, unknown_keys

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
    if config.PERMISSIONS is not None:
        from .permissions import PolicyError, compile_rules

        try:
            compile_rules(config.PERMISSIONS)
        except PolicyError as exc:
            errors.append(
                Error(
                    f"MEGAPHONE['PERMISSIONS'] cannot be used: {exc}",
                    hint="See megaphone.permissions for the rule format.",
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
