"""Mounted at ``/search/`` by ``config/urls.py``."""

from __future__ import annotations

from django.urls import path

from indexing import views

app_name = "indexing"

urlpatterns = [
    path("", views.search, name="search"),
]
