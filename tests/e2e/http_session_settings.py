"""Settings of the example project for the HTTP transport's rate-limit test: small bursts, so that a
dozen POSTs cross the limit."""

from tests.e2e.example_settings import *  # noqa: F403

MEGAPHONE = {
    **MEGAPHONE,  # noqa: F405
    "DASHBOARD_INTERVAL": 0,
    "PUBLISH_RATE": 1,
    "PUBLISH_BURST": 3,
    "SUBSCRIBE_RATE": 1,
    "SUBSCRIBE_BURST": 3,
}
