"""The web pages, mounted at the site root by ``config/urls.py``."""

from __future__ import annotations

from django.urls import path

from uploads import views

app_name = "uploads"

urlpatterns = [
    path("", views.index, name="index"),
    path("uploads/new/", views.new, name="new"),
    path("uploads/states/", views.states, name="states"),
    path("uploads/<int:upload_id>/", views.detail, name="detail"),
    path("uploads/<int:upload_id>/download/", views.download, name="download"),
    path("uploads/<int:upload_id>/delete/", views.delete, name="delete"),
]
