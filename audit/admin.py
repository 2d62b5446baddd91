"""The audit log is read-only in admin for everyone, superusers included."""

from __future__ import annotations

from django.contrib import admin

from audit.models import AuditEntry
from monitoring.admin import ReadOnlyAdmin


@admin.register(AuditEntry)
class AuditEntryAdmin(ReadOnlyAdmin):
    list_display = ("sequence", "event_type", "upload_id", "actor", "occurred_at", "recorded_at")
    list_filter = ("event_type",)
    search_fields = ("event_id", "upload_id", "hash")
