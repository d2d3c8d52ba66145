"""The security tier: one end-to-end test module per class of attack (docs/security.md).

Every test here attacks a real ``manage.py serve`` process (on 2 workers over a private Redis
where the class involves Redis) from 127.0.0.1, as a hostile client would, and checks both that the
attack is refused and that the well-behaved clients beside it are still served. The tier carries
the ``e2e`` and ``security`` markers.
"""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from tests.conftest import ROOT, ServerProcess

Start = Callable[..., ServerProcess]


@pytest.fixture
def attacked(server_factory: Callable[..., ServerProcess]) -> Start:
    """``attacked(workers=1, backend=None, env=None, **settings)`` starts the example project
    with those ``MEGAPHONE`` settings on top of its own (and no dashboard publisher, so counters
    count only what the test does); ``backend`` is a backend URL (a private Redis's, say);
    ``env``, more environment variables for the server (``DJANGO_SETTINGS_MODULE`` too)."""

    def start(
        *,
        workers: int = 1,
        backend: str | None = None,
        env: dict[str, str] | None = None,
        **settings: object,
    ) -> ServerProcess:
        overrides = {"DASHBOARD_INTERVAL": 0, **settings}
        if backend is not None:
            overrides["BACKEND"] = backend
        environment = {
            "DJANGO_SETTINGS_MODULE": "tests.e2e.hardening_settings",
            "PYTHONPATH": str(ROOT),
            "MEGAPHONE_OVERRIDES": json.dumps(overrides),
            **(env or {}),
        }
        return server_factory(workers=workers, env=environment)

    return start
