"""The running event loop's node, on the in-memory backend, for one test."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from django.conf import settings as django_settings
from django.test import override_settings

from megaphone.engine.node import Node, forget_node, get_node


@asynccontextmanager
async def memory_node(**settings: object) -> AsyncIterator[Node]:
    """A started node on ``memory://`` (with ``settings`` added to ``MEGAPHONE``), serving the
    running loop: ``publish``/``apublish`` and the ASGI endpoints of this loop use it. Stopped
    and forgotten on exit, so the next test starts from an empty node.
    """
    current = getattr(django_settings, "MEGAPHONE", None) or {}
    with override_settings(MEGAPHONE={**current, **settings, "BACKEND": "memory://"}):
        await forget_node()
        node = await get_node()
        try:
            yield node
        finally:
            await forget_node()
