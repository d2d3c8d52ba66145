"""The live dashboard: a staff-only page fed over Megaphone's own WebSocket.

The page subscribes to :data:`~megaphone.engine.stats.STATS_TOPIC`, on which every worker
publishes its figures (:mod:`megaphone.engine.stats`), reads its ten minutes of history first and
then goes live. The page requires a staff login, and the default permission policy lets only
staff subscribe to ``_megaphone.*`` topics.
"""

from __future__ import annotations

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from megaphone.engine.stats import STATS_TOPIC


@staff_member_required
def dashboard(request: HttpRequest) -> HttpResponse:
    return render(request, "megaphone/dashboard.html", {"stats_topic": STATS_TOPIC})
