"""URL routes. Each app owns its views; this only mounts them."""

from django.contrib import admin
from django.urls import include, path

from events.views import health

urlpatterns = [
    path("admin/", admin.site.urls),
    path("health/", health, name="health"),
    path("search/", include("indexing.urls")),
]
