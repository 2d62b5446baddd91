"""Notifications, read-only: what was sent, skipped or rejected, and why."""

from __future__ import annotations

from django.contrib import admin

from monitoring.admin import ReadOnlyAdmin
from notifications.models import Notification


@admin.register(Notification)
class NotificationAdmin(ReadOnlyAdmin):
    list_display = ("subject", "recipient", "state", "sent_at")
    list_filter = ("state",)
    search_fields = ("recipient", "subject", "event_id", "message_id")
    readonly_fields = (
        "event_id",
        "recipient",
        "subject",
        "state",
        "claimed_at",
        "message_id",
        "sent_at",
        "reason",
        "created_at",
    )
