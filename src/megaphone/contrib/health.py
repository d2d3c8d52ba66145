"""Operational endpoints: ``/healthz`` (the process serves), ``/readyz`` (and its backend answers)
and ``/metrics`` (Prometheus). :mod:`megaphone.urls` includes them; on their own::

    path("", include("megaphone.contrib.health")),

They expose no message content. Restrict ``/metrics`` at the proxy if its figures are private.
"""

from __future__ import annotations

import asyncio
import os

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path
from django.views.decorators.http import require_safe
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, generate_latest

from megaphone.backends import BackendUnavailable
from megaphone.engine.node import get_node

READY_TIMEOUT = 2.0


@require_safe
async def healthz(request: HttpRequest) -> HttpResponse:
    """200 while the process can serve a request at all."""
    return JsonResponse({"status": "ok"})


@require_safe
async def readyz(request: HttpRequest) -> HttpResponse:
    """200 when the backend answers within :data:`READY_TIMEOUT`, else 503 with the reason."""
    try:
        node = await asyncio.wait_for(get_node(), READY_TIMEOUT)
        await asyncio.wait_for(node.backend.ping(), READY_TIMEOUT)
    except (BackendUnavailable, TimeoutError, OSError) as exc:
        reason = str(exc) or type(exc).__name__
        return JsonResponse({"status": "unavailable", "reason": reason}, status=503)
    return JsonResponse({"status": "ready", "backend": node.backend.name})


@require_safe
async def metrics(request: HttpRequest) -> HttpResponse:
    """Prometheus text exposition of this process, or of all workers in multi-process mode."""
    registry = REGISTRY
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    return HttpResponse(generate_latest(registry), content_type=CONTENT_TYPE_LATEST)


urlpatterns = [
    path("healthz", healthz, name="megaphone-healthz"),
    path("readyz", readyz, name="megaphone-readyz"),
    path("metrics", metrics, name="megaphone-metrics"),
]
