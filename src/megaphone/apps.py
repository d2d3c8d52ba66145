from django.apps import AppConfig


class MegaphoneConfig(AppConfig):
    name = "megaphone"
    verbose_name = "Megaphone"
    default_auto_field = "django.db.models.BigAutoField"  # the migrations' id type

    def ready(self) -> None:
        from . import checks  # noqa: F401  (registers the system checks)
