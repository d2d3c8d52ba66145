"""Fixtures of the end-to-end tier beyond those of tests/conftest.py."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from tests.conftest import ROOT, ServerProcess

#: Environment that runs the example project with tests/e2e/protocol_settings.py.
PROTOCOL_SETTINGS_ENV = {
    "DJANGO_SETTINGS_MODULE": "tests.e2e.protocol_settings",
    "PYTHONPATH": str(ROOT),
}


@pytest.fixture
def protocol_server(server_factory: Callable[..., ServerProcess]) -> ServerProcess:
    """An example server with the protocol tests' topic options (see protocol_settings.py)."""
    return server_factory(env=PROTOCOL_SETTINGS_ENV)
