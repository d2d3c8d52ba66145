"""Registers the object permission of tests/e2e/test_django_permissions.py: a group's members
may view it (``auth.view_group`` on that group), as a project would with django-rules."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig


class PermsAppConfig(AppConfig):
    name = "tests.e2e.permsapp"
    label = "permsapp"

    def ready(self) -> None:
        import rules

        @rules.predicate
        def is_member(user: Any, group: Any) -> bool:
            return group is not None and user.groups.filter(pk=group.pk).exists()

        rules.add_perm("auth.view_group", is_member)
