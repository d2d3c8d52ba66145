"""``manage.py serve``: run the project's ASGI application under uvicorn, configured for Megaphone.

The WebSocket settings follow Megaphone's: the server refuses messages over ``MAX_MESSAGE_SIZE``
with close 1009 before buffering them, and permessage-deflate is off (it costs CPU per client and
memory per connection, and compressing attacker-chosen data next to secrets is a risk).
"""

from __future__ import annotations

import os
from typing import Any

import uvicorn
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

from megaphone.conf import get_config


def asgi_import_string() -> str:
    """``ASGI_APPLICATION`` ("pkg.asgi.application") the way uvicorn takes it ("pkg.asgi:app")."""
    path = getattr(settings, "ASGI_APPLICATION", None)
    if not path:
        raise CommandError("Set ASGI_APPLICATION in your settings, e.g. 'mysite.asgi.application'.")
    module, _, attribute = path.rpartition(".")
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

    def handle(self, *args: Any, **options: Any) -> None:
        if options["workers"] < 1:
            raise CommandError("--workers must be at least 1")
        # The system checks read the worker count (megaphone.E004: several workers need Redis).
        os.environ["MEGAPHONE_WORKERS"] = str(options["workers"])
        self.check(display_num_errors=True)
        config = get_config()
        uvicorn.run(
            asgi_import_string(),
            host=options["host"],
            port=options["port"],
            workers=options["workers"],
            lifespan="off",
            http="megaphone.transports.uvicorn:HttpProtocol",
            ws="megaphone.transports.uvicorn:WebSocketProtocol",
            ws_max_size=config.MAX_MESSAGE_SIZE,
            ws_per_message_deflate=False,
            ws_ping_interval=config.PING_INTERVAL,
            ws_ping_timeout=config.PING_TIMEOUT,
            backlog=4096,
            access_log=options["access_log"],
            log_level=options["log_level"],
            timeout_graceful_shutdown=5,
        )
