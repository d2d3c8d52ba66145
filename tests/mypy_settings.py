"""The Django settings mypy's django-stubs plugin loads (pyproject.toml [tool.mypy]): the apps whose
models src/ refers to, and nothing that needs the example project on the import path."""

SECRET_KEY = "mypy-only"
INSTALLED_APPS = [
    "megaphone",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "channels",
]
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
USE_TZ = True
