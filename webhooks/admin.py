"""Webhook endpoints (editable: activate again, change types) and their read-only records.

Secrets are never shown here: the owner sees a secret once, when it is made.
"""

from __future__ import annotations

from django.contrib import admin

from monitoring.admin import ReadOnlyAdmin
from webhooks.models import Call, Endpoint, EndpointDelivery


@admin.register(Endpoint)
class EndpointAdmin(admin.ModelAdmin):
    list_display = (
        "__str__",
        "owner",
        "active",
        "deactivated_reason",
        "failing_since",
        "created_at",
    )
    list_filter = ("active",)
    search_fields = ("url", "owner__username")
    readonly_fields = ("owner", "url", "previous_secret_expires_at", "failing_since", "created_at")
    fields = (
        "owner",
        "url",
        "event_types",
        "active",
        "deactivated_reason",
        "failing_since",
        "previous_secret_expires_at",
        "created_at",
    )

    def has_add_permission(self, request: object) -> bool:
        return False  # added through the pages or add_webhook, which check the address


@admin.register(EndpointDelivery)
class EndpointDeliveryAdmin(ReadOnlyAdmin):
    list_display = ("event_id", "endpoint", "state", "calls", "last_status", "updated_at")
    list_filter = ("state",)
    search_fields = ("event_id",)
    readonly_fields = (
        "event_id",
        "endpoint",
        "state",
        "not_before",
        "calls",
        "last_status",
        "last_error",
        "delivered_at",
        "created_at",
        "updated_at",
    )


@admin.register(Call)
class CallAdmin(ReadOnlyAdmin):
    list_display = ("created_at", "endpoint", "event_type", "outcome", "status_code", "duration_ms")
    list_filter = ("outcome", "event_type")
    search_fields = ("event_id",)
    readonly_fields = (
        "endpoint",
        "event_id",
        "event_type",
        "outcome",
        "status_code",
        "error",
        "response_body",
        "duration_ms",
        "created_at",
    )
