"""The test app of tests/e2e/django_settings.py: the object permission of
test_django_permissions.py (a group's members may view it, ``auth.view_group`` on that group, as
a project would with django-rules), and the client_publish hook of test_hooks.py (on
``moderated.*``: "spam" is refused with the code ``spam``, text is upper-cased, a JSON object
gets ``"checked": true``), and presence receivers appending each event to the file
``MEGAPHONE_TEST_PRESENCE_LOG`` names (test_hooks.py); a server_subscriptions receiver putting
every logged-in connection on its ``user:<pk>`` when ``MEGAPHONE_TEST_SERVER_SUBSCRIPTIONS`` is
set (test_control.py); occupancy receivers appending each event to the file
``MEGAPHONE_TEST_OCCUPANCY_LOG`` names (test_hooks.py)."""

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

        from megaphone.server.hooks import PublishRejected, client_publish

        def moderate(sender: str, topic: str, data: Any, **kwargs: Any) -> Any:
            if not topic.startswith("moderated."):
                return None
            if isinstance(data, str) and "spam" in data:
                raise PublishRejected("spam", "no spam here")
            if isinstance(data, str):
                return data.upper()
            if isinstance(data, dict):
                return {**data, "checked": True}
            return None

        client_publish.connect(moderate, weak=False)

        import os

        from megaphone.server.hooks import presence_joined, presence_left

        def record(event: str) -> Any:
            def receiver(sender: str, topic: str, client: str, **kwargs: Any) -> None:
                path = os.environ.get("MEGAPHONE_TEST_PRESENCE_LOG")
                if path:
                    with open(path, "a") as log:
                        log.write(f"{event} {topic} {client} {os.getpid()}\n")

            return receiver

        presence_joined.connect(record("join"), weak=False)
        presence_left.connect(record("leave"), weak=False)

        from megaphone.server.hooks import server_subscriptions

        def own_topic(sender: str, user: Any, scope: Any, **kwargs: Any) -> Any:
            if not os.environ.get("MEGAPHONE_TEST_SERVER_SUBSCRIPTIONS"):
                return None
            return [f"user:{user.pk}"] if user.is_authenticated else None

        server_subscriptions.connect(own_topic, weak=False)

        from megaphone.server.hooks import topic_occupied, topic_vacated

        def occupancy(event: str) -> Any:
            def receiver(sender: str, topic: str, **kwargs: Any) -> None:
                path = os.environ.get("MEGAPHONE_TEST_OCCUPANCY_LOG")
                if path:
                    with open(path, "a") as log:
                        log.write(f"{event} {topic} {os.getpid()}\n")

            return receiver

        if os.environ.get("MEGAPHONE_TEST_OCCUPANCY_LOG"):
            topic_occupied.connect(occupancy("occupied"), weak=False)
            topic_vacated.connect(occupancy("vacated"), weak=False)
