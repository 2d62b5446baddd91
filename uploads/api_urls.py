"""Routes of the JSON API, mounted at ``/api/`` (see ``uploads.api`` for the contract)."""

from django.urls import path, re_path

from uploads import api

app_name = "api"

urlpatterns = [
    path("uploads/", api.uploads_collection, name="uploads"),
    path("uploads/<int:upload_id>/", api.upload_detail, name="upload"),
    path("uploads/<int:upload_id>/download/", api.upload_download, name="download"),
    # Last: every other path under /api/ answers with a JSON 404.
    re_path(r"^(?P<path>.*)$", api.not_found, name="not_found"),
]
