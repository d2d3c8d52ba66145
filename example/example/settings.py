"""Settings of the demo project. Environment variables:

REDIS_URL: use the Redis backend (several workers, several machines); default in-memory.
MEGAPHONE_BACKEND: any backend URL (e.g. postgres://user@host:5432/db); wins over REDIS_URL.
DJANGO_DEBUG=1: Django's debug mode. DJANGO_ALLOWED_HOSTS: comma-separated hosts.
DJANGO_SECRET_KEY: the secret key (a development key is used when unset).
MEGAPHONE_API_KEYS: comma-separated keys of the HTTP API at /api/ (none by default).
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "dev-only-insecure-key-change-me-in-production")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost,[::1]").split(",")

INSTALLED_APPS = [
    "megaphone",  # first: its runserver (uvicorn, WebSockets) wins over staticfiles' (WSGI)
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "channels",
    "demo",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "example.urls"
ASGI_APPLICATION = "example.asgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("DJANGO_SQLITE_PATH", BASE_DIR / "db.sqlite3"),
    }
}

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / "staticfiles"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

MEGAPHONE: dict[str, object] = {
    # The demo page shows who is on topic "broadcast".
    "TOPICS": {"broadcast": {"presence": True, "join_leave": True}},
    # Keys of the HTTP API at /api/ (docs/http-api.md); none: the API refuses every request.
    "API_KEYS": [key for key in os.environ.get("MEGAPHONE_API_KEYS", "").split(",") if key],
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"megaphone": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
