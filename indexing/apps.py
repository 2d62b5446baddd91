from __future__ import annotations

from django.apps import AppConfig


class IndexingConfig(AppConfig):
    """The indexing consumer (``indexing/consumer.py``): full-text index, search page and command."""

    name = "indexing"
    verbose_name = "Search index"
