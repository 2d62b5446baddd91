"""Sent notifications, read-only."""

from __future__ import annotations

from django.contrib import admin

from notifications.models import Notification


@admin.register(Notification)
class NotificationAdmin(admin.ModelAdmin):
    list_display = ("subject", "recipient", "sent_at", "skipped_reason", "event_id")
    search_fields = ("recipient", "subject", "event_id")
    readonly_fields = (
        "event_id",
        "recipient",
        "subject",
        "message_id",
        "sent_at",
        "skipped_reason",
    )
