from django.contrib import admin
from django.urls import include, path

from demo import views
from megaphone.dashboard import dashboard

urlpatterns = [
    path("", views.index, name="index"),
    path("admin/", admin.site.urls),
    path("megaphone/dashboard/", dashboard, name="megaphone-dashboard"),
    path("", include("megaphone.health")),
    path("api/", include("megaphone.urls")),
]
