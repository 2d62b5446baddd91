"""URL routes. Each app owns its views; this only mounts them."""

from django.contrib import admin
from django.urls import include, path

from events.views import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
    # Sign in and out (logout is a POST), password change: Django's own views.
    path("accounts/", include("django.contrib.auth.urls")),
    path("search/", include("indexing.urls")),
    path("api/", include("uploads.api_urls")),
    path("webhooks/", include("webhooks.urls")),
    path("", include("uploads.urls")),
]
