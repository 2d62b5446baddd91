"""The search index, for looking only."""

from __future__ import annotations

from django.contrib import admin

from indexing.models import IndexEntry


@admin.register(IndexEntry)
class IndexEntryAdmin(admin.ModelAdmin):
    list_display = ("name", "upload_id", "owner_id", "deleted", "note", "indexed_at")
    list_filter = ("deleted",)
    search_fields = ("name", "upload_id")
    readonly_fields = ("upload_id", "owner_id", "name", "text", "note", "deleted", "indexed_at")
