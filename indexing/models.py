"""The search index: one entry per upload, kept as a tombstone once the upload is deleted.

The full-text structures depend on the database. On SQLite an FTS5 table
(``indexing_indexentry_fts``, created by migration 0001 and kept in step by triggers)
indexes ``name`` and ``text`` of the live entries. On PostgreSQL ``search_vector``
holds their ``tsvector`` under a GIN index; on SQLite that column stays empty and the
index is not created (the migration skips it).
"""

from __future__ import annotations

from django.contrib.postgres.indexes import GinIndex
from django.contrib.postgres.search import SearchVectorField
from django.db import models

FTS_TABLE = "indexing_indexentry_fts"


class IndexEntry(models.Model):
    """Searchable text of one upload. ``deleted`` stays set so a late upload event is ignored."""

    upload_id = models.BigIntegerField(unique=True)
    owner_id = models.BigIntegerField(db_index=True)
    name = models.CharField(max_length=255)
    text = models.TextField(blank=True)
    note = models.CharField(
        max_length=255, blank=True, help_text="Why the text is missing or partial."
    )
    deleted = models.BooleanField(default=False)
    indexed_at = models.DateTimeField(auto_now=True)
    # PostgreSQL only: filled by indexing.services; always NULL on SQLite.
    search_vector = SearchVectorField(null=True, blank=True, editable=False)

    class Meta:
        verbose_name_plural = "index entries"
        indexes = [
            # Created on PostgreSQL only; see migration 0001.
            GinIndex(fields=["search_vector"], name="indexentry_search_gin"),
        ]

    def __str__(self) -> str:
        return self.name
