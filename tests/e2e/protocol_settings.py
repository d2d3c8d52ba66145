"""Settings of the example project for the protocol's end-to-end tests: a small-history topic
pattern, presence on ``room.*``, and a durable ``durable.*``."""

from tests.e2e.example_settings import *  # noqa: F403
from tests.e2e.example_settings import OPEN_PERMISSIONS

MEGAPHONE = {
    "PERMISSIONS": OPEN_PERMISSIONS,
    "TOPICS": {
        "small.*": {"history_size": 20},
        "room.*": {"presence": True, "join_leave": True},
        "durable.*": {"durable": True},
        "price.*": {"latest": True},
    },
}
