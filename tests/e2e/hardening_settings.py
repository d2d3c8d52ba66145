"""Settings of the example project for the hardening tests: ``MEGAPHONE`` plus the JSON object in
the ``MEGAPHONE_OVERRIDES`` environment variable (e.g. ``{"PUBLISH_RATE": 20}``)."""

import json
import os

from tests.e2e.example_settings import *  # noqa: F403
from tests.e2e.example_settings import MEGAPHONE

MEGAPHONE = {**MEGAPHONE, **json.loads(os.environ.get("MEGAPHONE_OVERRIDES", "{}"))}
