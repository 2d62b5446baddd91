"""The search index, for looking only: entries are written by the consumer alone."""

from __future__ import annotations

from django.contrib import admin

from indexing.models import IndexEntry
from monitoring.admin import ReadOnlyAdmin

TEXT_PREVIEW_CHARS = 2_000


# Read-only, delete included: deleting a tombstone would let a late file.uploaded
# resurrect the file.
@admin.register(IndexEntry)
class IndexEntryAdmin(ReadOnlyAdmin):
    list_display = ("name", "upload_id", "owner_id", "deleted", "note", "indexed_at")
    list_filter = ("deleted",)
    search_fields = ("name", "=upload_id")
    fields = ("upload_id", "owner_id", "name", "deleted", "note", "indexed_at", "text_preview")
    readonly_fields = fields

    @admin.display(description="text (start)")
    def text_preview(self, entry: IndexEntry) -> str:
        # The text can be a million characters; the page shows its start.
        return entry.text[:TEXT_PREVIEW_CHARS]
