"""Settings of the example project for the Redis scale-out tests: no dashboard figures (so every
PUBLISH in Redis is a message the test published), no publish-rate limit, and an API key."""

from tests.e2e.example_settings import *  # noqa: F403

MEGAPHONE = {
    **MEGAPHONE,  # noqa: F405
    "DASHBOARD_INTERVAL": 0,
    "PUBLISH_RATE": 0,
    "API_KEYS": ["test-key-0123456789abcdef"],
}
