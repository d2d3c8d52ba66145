from django.apps import AppConfig


class MegaphoneConfig(AppConfig):
    name = "megaphone"
    verbose_name = "Megaphone"
    default_auto_field = "django.db.models.BigAutoField"  # the migrations' id type

    def ready(self) -> None:
        from django.contrib.auth.signals import user_logged_out

        from megaphone import checks  # noqa: F401  (registers the system checks)
        from megaphone.core.logs import ensure_request_errors_logged, install_server_log_filters
        from megaphone.server.auth import on_user_logged_out
        from megaphone.server.control import connect_revocation

        user_logged_out.connect(on_user_logged_out, dispatch_uid="megaphone.logout")
        connect_revocation()  # a change of a user's rights re-checks their live subscriptions
        from megaphone.engine.occupancy import watch
        from megaphone.server.hooks import occupancy_wanted, send_occupancy

        watch(occupancy_wanted, send_occupancy)  # topic_occupied / topic_vacated
        # Whatever serves the project: server log lines escaped and without secrets, and HTTP
        # 500s logged (see megaphone.core.logs).
        install_server_log_filters()
        ensure_request_errors_logged()
