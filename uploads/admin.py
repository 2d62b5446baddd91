"""Admin for uploads. Every deletion goes through ``delete_upload`` so consumers hear of it."""

from __future__ import annotations

from django.contrib import admin
from django.db.models import QuerySet
from django.http import HttpRequest

from events.selectors import deliveries_for_aggregate
from uploads.models import Upload
from uploads.services import delete_upload


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = (
        "original_name",
        "owner",
        "size",
        "content_type",
        "created_at",
        "delivery_states",
    )
    list_filter = ("content_type", "created_at")
    search_fields = ("original_name", "owner__username", "sha256")
    readonly_fields = (
        "owner",
        "file",
        "original_name",
        "size",
        "content_type",
        "sha256",
        "created_at",
    )
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    @admin.display(description="consumers")
    def delivery_states(self, upload: Upload) -> str:
        states = deliveries_for_aggregate(upload.pk)
        return ", ".join(f"{consumer}: {state}" for consumer, state in sorted(states.items()))

    def delete_model(self, request: HttpRequest, obj: Upload) -> None:
        delete_upload(obj, actor=request.user)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Upload]) -> None:
        for upload in queryset:
            delete_upload(upload, actor=request.user)
