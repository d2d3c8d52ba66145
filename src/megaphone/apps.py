from django.apps import AppConfig


class MegaphoneConfig(AppConfig):
    name = "megaphone"
    verbose_name = "Megaphone"
    default_auto_field = "django.db.models.BigAutoField"  # the migrations' id type

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from . import checks  # noqa: F401  (registers the system checks)
        from .auth import on_user_logged_out

        user_logged_out.connect(on_user_logged_out, dispatch_uid="megaphone.logout")
