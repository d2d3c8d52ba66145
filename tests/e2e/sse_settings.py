"""Settings of the example project for the SSE tests: a heartbeat every 0.3 s (so a test sees one
without waiting the default 15), no dashboard figures and no publish-rate limit."""

from tests.e2e.example_settings import *  # noqa: F403

MEGAPHONE = {
    **MEGAPHONE,  # noqa: F405
    "DASHBOARD_INTERVAL": 0,
    "PUBLISH_RATE": 0,
    "SSE_HEARTBEAT": 0.3,
}
