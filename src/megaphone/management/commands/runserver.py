"""``manage.py runserver`` that serves WebSockets: Django's development server, on uvicorn.

With ``megaphone`` in ``INSTALLED_APPS`` *before* ``django.contrib.staticfiles`` (Django runs the
command of the first app that has one, as with daphne), ``runserver`` serves ``ASGI_APPLICATION``
(HTTP and Megaphone's WebSockets) under uvicorn with the settings of ``manage.py serve``
(:func:`megaphone.server.uvicorn_options.uvicorn_options`). What stays Django's: the
autoreloader (a change to any imported module restarts the server; ``--noreload`` turns it off),
the system checks and the unapplied-migrations notice on each start, the banner, ``addrport`` and
``--ipv6``, and, when ``django.contrib.staticfiles`` is installed, static files while ``DEBUG`` is
on (``--nostatic``, ``--insecure``). ``--nothreading`` is accepted and ignored: uvicorn serves every
request on one event loop.
"""

from __future__ import annotations

import errno
import os
import socket
import sys
from datetime import datetime
from typing import Any

import uvicorn
from django.apps import apps
from django.conf import settings
from django.core.management.commands.runserver import Command as DjangoRunserver
from django.db import connections
from django.utils import autoreload
from django.utils.module_loading import import_string

from megaphone.management.commands.serve import asgi_application_path
from megaphone.server.uvicorn_options import uvicorn_options

#: What the errors of binding the address mean, as Django's runserver says them.
BIND_ERRORS = {
    errno.EACCES: "You don't have permission to access that port.",
    errno.EADDRINUSE: "That port is already in use.",
    errno.EADDRNOTAVAIL: "That IP address can't be assigned to.",
}


class Command(DjangoRunserver):
    help = "Starts a development server for HTTP and WebSockets (uvicorn), with autoreload."
    # Set by Django's handle() from addrport and --ipv6.
    addr: str
    port: str
    use_ipv6: bool
    _raw_ipv6: bool

    def add_arguments(self, parser: Any) -> None:
        super().add_arguments(parser)
        if apps.is_installed("django.contrib.staticfiles"):
            parser.add_argument(
                "--nostatic",
                action="store_false",
                dest="use_static_handler",
                help="Tells Django to NOT automatically serve static files at STATIC_URL.",
            )
            parser.add_argument(
                "--insecure",
                action="store_true",
                dest="insecure_serving",
                help="Allows serving static files even if DEBUG is False.",
            )

    def handle(self, *args: Any, **options: Any) -> None:
        asgi_application_path()  # a missing ASGI_APPLICATION is a CommandError, before serving
        super().handle(*args, **options)

    def inner_run(self, *args: Any, **options: Any) -> None:
        """Django's ``inner_run`` up to the server, then uvicorn on the bound socket."""
        autoreload.raise_last_exception()
        if not options["skip_checks"]:
            self.stdout.write("Performing system checks...\n\n")
            self.check(display_num_errors=True)
        self.check_migrations()
        for connection in connections.all(initialized_only=True):
            connection.close()
        try:
            listening = self.bind()
        except OSError as exc:
            self.stderr.write(f"Error: {BIND_ERRORS.get(exc.errno or 0, exc)}")
            os._exit(1)  # sys.exit() would end only this thread under the autoreloader
        self.on_bind(listening.getsockname()[1])
        config = uvicorn.Config(
            self.get_application(options),
            access_log=True,
            timeout_graceful_shutdown=2,
            **uvicorn_options(),
        )
        uvicorn.Server(config).run(sockets=[listening])

    def bind(self) -> socket.socket:
        """The listening socket on ``addrport``."""
        listening = socket.socket(socket.AF_INET6 if self.use_ipv6 else socket.AF_INET)
        listening.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listening.bind((self.addr, int(self.port)))
        listening.listen(128)
        listening.set_inheritable(True)
        return listening

    def on_bind(self, server_port: int) -> None:
        """Django's banner, naming what serves: ASGI under uvicorn (Django 6.1's own banner says
        "WSGI development server")."""
        addr = f"[{self.addr}]" if self._raw_ipv6 else "0.0.0.0" if self.addr == "0" else self.addr
        protocols = "Megaphone's" if uvicorn_options()["ws"].startswith("megaphone.") else "stock"
        quit_command = "CTRL-BREAK" if sys.platform == "win32" else "CONTROL-C"
        self.stdout.write(
            f"{datetime.now():%B %d, %Y - %X}\n"
            f"Django version {self.get_version()}, using settings {settings.SETTINGS_MODULE!r}\n"
            f"Starting ASGI development server (HTTP and WebSockets: uvicorn "
            f"{uvicorn.__version__}, {protocols} protocols) at "
            f"{self.protocol}://{addr}:{server_port}/\n"
            f"Quit the server with {quit_command}."
        )
        if os.environ.get("DJANGO_RUNSERVER_HIDE_WARNING") != "true":
            self.stdout.write(
                self.style.WARNING(
                    "WARNING: This is a development server. Do not use it in a production "
                    "setting. Use manage.py serve instead (docs/deploy.md)."
                )
            )
        sys.stdout.flush()

    def get_application(self, options: dict[str, Any]) -> Any:
        """``ASGI_APPLICATION``, behind Django's static files handler while ``DEBUG`` is on (or
        with ``--insecure``), as ``django.contrib.staticfiles``' runserver does."""
        application = import_string(asgi_application_path())
        use_static = options.get(
            "use_static_handler", apps.is_installed("django.contrib.staticfiles")
        )
        if use_static and (settings.DEBUG or options.get("insecure_serving")):
            from django.contrib.staticfiles.handlers import ASGIStaticFilesHandler

            return ASGIStaticFilesHandler(application)
        return application
