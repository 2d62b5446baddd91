"""URL routes. Each app owns its views; this only mounts them."""

from django.contrib import admin
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path

from events.metrics import metrics
from events.views import health


def favicon(request: HttpRequest) -> HttpResponse:
    """``/favicon.ico``, which browsers ask for on pages without an icon link (admin)."""
    return redirect(static("uploads/favicon.svg"), permanent=True)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
    path("favicon.ico", favicon),
    # Prometheus scrapes /metrics (no slash) by default; 404 unless METRICS_TOKEN is set.
    path("metrics", metrics, name="metrics"),
    # Sign in and out (logout is a POST), password change: Django's own views.
    path("accounts/", include("django.contrib.auth.urls")),
    path("search/", include("indexing.urls")),
    path("api/", include("uploads.api_urls")),
    path("", include("uploads.urls")),
]
