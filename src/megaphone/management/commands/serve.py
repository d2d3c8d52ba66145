"""``manage.py serve``: run the project's ASGI application under uvicorn, configured for Megaphone
(:func:`megaphone.server.uvicorn_options.uvicorn_options`).

``--reload`` restarts the server when a Python module it imported changes, with Django's
autoreloader (the one ``runserver`` uses), and runs one worker.

``--transport native`` serves Megaphone's WebSocket endpoints with the native transport
(:mod:`megaphone.server.native`: no ASGI chain per connection, less memory and CPU per
connection); everything else still goes through the project's ASGI application. The default,
``asgi``, runs every WebSocket through it too.
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError
from django.utils import autoreload

from megaphone.server.uvicorn_options import NativeUnavailable, uvicorn_options


def asgi_application_path() -> str:
    """``ASGI_APPLICATION`` ("pkg.asgi.application"); a CommandError when it is not set."""
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not path:
        raise CommandError("Set ASGI_APPLICATION in your settings, e.g. 'mysite.asgi.application'.")
    return str(path)


def asgi_import_string() -> str:
    """``ASGI_APPLICATION`` the way uvicorn takes it ("pkg.asgi:application")."""
    module, _, attribute = asgi_application_path().rpartition(".")
    return f"{module}:{attribute}"


class Command(BaseCommand):
    help = "Serve the ASGI application (HTTP and Megaphone's WebSockets) with uvicorn."
    requires_system_checks = ()  # run below, once the worker count is known

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8000)
        parser.add_argument(
            "--workers",
            type=int,
            default=int(os.environ.get("WEB_CONCURRENCY", "1")),
            help="worker processes sharing the port (several need the Redis backend)",
        )
        parser.add_argument("--access-log", action="store_true", help="log every request")
        parser.add_argument("--log-level", default="info")
        parser.add_argument(
            "--transport",
            choices=("asgi", "native"),
            default="asgi",
            help="native: Megaphone's WebSocket endpoints without ASGI (docs/deploy.md)",
        )
        parser.add_argument(
            "--reload",
            action="store_true",
            help="restart when a Python module changes (development; one worker)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        if options["workers"] < 1:
            raise CommandError("--workers must be at least 1")
        # The system checks read the worker count (megaphone.E004: several workers need Redis).
        os.environ["MEGAPHONE_WORKERS"] = str(options["workers"])
        if options["reload"] and options["workers"] != 1:
            raise CommandError("--reload runs one worker: leave out --workers")
        if options["reload"]:
            autoreload.run_with_reloader(self.serve, **options)
        else:
            self.serve(**options)

    def serve(self, **options: Any) -> None:
        """Check, then serve until stopped (in the autoreloader's child process with --reload)."""
        autoreload.raise_last_exception()
        self.check(display_num_errors=True)
        try:
            protocol_options = uvicorn_options(native=options["transport"] == "native")
        except NativeUnavailable as exc:
            raise CommandError(f"--transport native cannot run on this uvicorn: {exc}") from None
        try:
            uvicorn.run(
                asgi_import_string(),
                host=options["host"],
                port=options["port"],
                workers=options["workers"],
                backlog=4096,
                access_log=options["access_log"],
                log_level=options["log_level"],
                timeout_graceful_shutdown=5,
                **protocol_options,
            )
        except SystemExit as exc:
            if not options["reload"]:
                raise
            # uvicorn could not start (the port is taken, say). Under the autoreloader this runs
            # in a thread, where sys.exit() would end the thread and leave the process watching.
            os._exit(exc.code if isinstance(exc.code, int) else 1)
