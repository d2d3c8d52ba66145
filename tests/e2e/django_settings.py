"""Settings of the example project for the tests of Django's permission model in the topic
policy (tests/e2e/test_django_permissions.py): ``perm:``, ``group:`` and object rules, with
django-rules as the object-permission backend."""

from tests.e2e.example_settings import *  # noqa: F403
from tests.e2e.example_settings import INSTALLED_APPS, MEGAPHONE, OPEN_PERMISSIONS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.e2e.permsapp"]
AUTHENTICATION_BACKENDS = [
    "rules.permissions.ObjectPermissionBackend",
    "django.contrib.auth.backends.ModelBackend",
]

MEGAPHONE = {
    **MEGAPHONE,
    "PERMISSIONS": [
        # Anyone with the model permission reads; only those who may change users publish.
        {"topics": "reports", "default": "perm:auth.view_user", "publish": "perm:auth.change_user"},
        # team:<pk> is the Group of that pk: user.has_perm("auth.view_group", group).
        {"topics": "team:*", "object": "auth.Group", "default": "perm:auth.view_group"},
        {"topics": "editors", "default": "group:editors"},
        *OPEN_PERMISSIONS,
    ],
    "TOPICS": {"room.*": {"presence": True}},
}
