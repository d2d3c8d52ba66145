"""Settings of the example project for the protocol's end-to-end tests: a small-history topic
pattern, presence on ``room.*``, and a durable ``durable.*``."""

from example.settings import *  # noqa: F403

MEGAPHONE = {
    "TOPICS": {
        "small.*": {"history_size": 20},
        "room.*": {"presence": True, "join_leave": True},
        "durable.*": {"durable": True},
    },
}
