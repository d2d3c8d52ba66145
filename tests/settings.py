"""Settings for the test suite: the example project's, on an in-memory SQLite database."""

from example.settings import *  # noqa: F403
from tests.e2e.example_settings import OPEN_PERMISSIONS

DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]

# In-process tests run one event loop per test: no background stats publisher in them.
# No outbox relay in the in-process tiers: their nodes run without database access.
MEGAPHONE = {
    "DASHBOARD_INTERVAL": 0,
    "PERMISSIONS": OPEN_PERMISSIONS,
    "TRANSACTION_RELAY_INTERVAL": 0,
}
