"""Minimal Django project for the Channels tutorial peer (benchmark only, not for production).

The channel layer is picked by the BENCH_CHANNEL_LAYER environment variable:
- ``memory`` (default): channels.layers.InMemoryChannelLayer, as in the tutorial's first steps;
- ``redis_pubsub``: channels_redis.pubsub.RedisPubSubChannelLayer on BENCH_REDIS_URL.
"""

import os

SECRET_KEY = "bench-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
INSTALLED_APPS = ["channels"]
MIDDLEWARE: list[str] = []
ROOT_URLCONF = "tutorial.urls"
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True
ASGI_APPLICATION = "tutorial.asgi.application"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "root": {"handlers": ["console"], "level": "WARNING"},
}

_layer = os.environ.get("BENCH_CHANNEL_LAYER", "memory")
if _layer == "memory":
    CHANNEL_LAYERS = {"default": {"BACKEND": "channels.layers.InMemoryChannelLayer"}}
elif _layer == "redis_pubsub":
    CHANNEL_LAYERS = {
        "default": {
            "BACKEND": "channels_redis.pubsub.RedisPubSubChannelLayer",
            "CONFIG": {
                "hosts": [os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/12")],
                "prefix": os.environ.get("BENCH_REDIS_PREFIX", "megabench"),
            },
        }
    }
else:
    raise RuntimeError(f"unknown BENCH_CHANNEL_LAYER {_layer!r}")
