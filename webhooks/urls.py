"""Mounted at ``/webhooks/`` by ``config/urls.py``."""

from __future__ import annotations

from django.urls import path

from webhooks import views

app_name = "webhooks"

urlpatterns = [
    path("", views.endpoints, name="endpoints"),
    path("<int:endpoint_id>/delete/", views.delete, name="delete"),
    path("<int:endpoint_id>/ping/", views.ping, name="ping"),
    path("<int:endpoint_id>/rotate/", views.rotate, name="rotate"),
    path("<int:endpoint_id>/enable/", views.enable, name="enable"),
    path("<int:endpoint_id>/types/", views.event_types, name="types"),
]
