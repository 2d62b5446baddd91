"""Admin for the event log and the delivery ledger (read-only: history is not edited)."""

from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from events.models import Delivery, DeliveryAttempt, Event


class ReadOnlyAdmin(admin.ModelAdmin):
    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = ("consumer", "state", "attempts", "last_error", "enqueued_at", "completed_at")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("id", "type", "version", "aggregate_id", "actor", "occurred_at")
    list_filter = ("type", "version")
    search_fields = ("id", "aggregate_id", "correlation_id")
    date_hierarchy = "occurred_at"
    inlines = [DeliveryInline]


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = ("number", "outcome", "task_id", "worker", "started_at", "finished_at", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    list_display = ("pk", "consumer", "state", "attempts", "event", "enqueued_at", "completed_at")
    list_filter = ("consumer", "state")
    search_fields = ("event__id", "event__aggregate_id", "task_id")
    list_select_related = ("event",)
    inlines = [DeliveryAttemptInline]
