"""URL routes. Each app owns its views; this only mounts them."""

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.templatetags.static import static
from django.urls import include, path

from config.health import health
from monitoring.metrics import metrics


def favicon(request: HttpRequest) -> HttpResponse:
    """``/favicon.ico``, which browsers ask for on pages without an icon link (admin)."""
    return redirect(static("uploads/favicon.svg"), permanent=True)


urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
    path("favicon.ico", favicon),
    # Prometheus scrapes /metrics (no slash) by default; 404 unless METRICS_TOKEN is set.
    path("metrics", metrics, name="metrics"),
    # Sign in and out (logout is a POST), password change: Django's own views. No password
    # reset: it would mail a link to any address on file, unthrottled, and a forgotten
    # password is reset by an admin (`manage.py changepassword NAME`).
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path(
        "accounts/password_change/",
        auth_views.PasswordChangeView.as_view(),
        name="password_change",
    ),
    path(
        "accounts/password_change/done/",
        auth_views.PasswordChangeDoneView.as_view(),
        name="password_change_done",
    ),
    path("search/", include("indexing.urls")),
    path("api/", include("uploads.api_urls")),
    path("webhooks/", include("webhooks.urls")),
    path("", include("uploads.urls")),
]
