"""The search index: one entry per upload, kept as a tombstone once the upload is deleted."""

from __future__ import annotations

from django.db import models


class IndexEntry(models.Model):
    """Searchable text of one upload. ``deleted`` stays set so a late upload event is ignored."""

    upload_id = models.BigIntegerField(unique=True)
    owner_id = models.BigIntegerField(db_index=True)
    name = models.CharField(max_length=255)
    text = models.TextField(blank=True)
    note = models.CharField(max_length=255, blank=True, help_text="Why no text was extracted.")
    deleted = models.BooleanField(default=False)
    indexed_at = models.DateTimeField(auto_now=True)

    class Meta:
        verbose_name_plural = "index entries"

    def __str__(self) -> str:
        return self.name
