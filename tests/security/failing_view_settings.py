"""Settings of the example project for tests/security/test_logs.py: the hardening settings, plus
``/boom/``, a view that raises (an unhandled error, HTTP 500)."""

from tests.e2e.hardening_settings import *  # noqa: F403

ROOT_URLCONF = "tests.security.failing_view_urls"
