"""Admin for uploads. Every deletion goes through ``delete_upload`` so consumers hear of it."""

from __future__ import annotations

from typing import Any

from django.contrib import admin, messages
from django.contrib.admin.views.main import ChangeList
from django.contrib.auth import get_user_model
from django.core.exceptions import PermissionDenied
from django.db.models import CharField, Exists, OuterRef, QuerySet
from django.db.models.functions import Cast
from django.http import HttpRequest, HttpResponse
from django.template.defaultfilters import filesizeformat
from django.template.response import TemplateResponse
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.utils.html import format_html, format_html_join
from django.utils.http import urlencode

from events.models import Delivery
from monitoring.selectors import latest_deliveries_for_aggregates
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.exceptions import UploadGone
from uploads.models import ApiToken, Upload
from uploads.services import delete_upload
from uploads.tokens import issue_key, revoke_api_token

UPLOAD_EVENT_TYPES = (FILE_UPLOADED, FILE_DELETED)
STATE_COLOURS = {"done": "#417690", "pending": "#b88a00", "retrying": "#b88a00", "dead": "#ba2121"}


def _upload_deliveries(upload_pk: OuterRef | int) -> QuerySet[Delivery]:
    """The deliveries of events about one upload (event ids are strings in the log)."""
    aggregate = Cast(upload_pk, CharField()) if isinstance(upload_pk, OuterRef) else str(upload_pk)
    return Delivery.objects.filter(
        event__aggregate_id=aggregate, event__type__in=UPLOAD_EVENT_TYPES
    )


def ledger_states(upload_pks: list[int]) -> dict[int, dict[str, str]]:
    """Upload id → consumer → ledger state of its ``file.uploaded`` event, in one query.

    Operators see the ledger's own words (``dead``), where the owner's pages say ``failed``.
    """
    grouped = latest_deliveries_for_aggregates(upload_pks, event_type=FILE_UPLOADED)
    return {
        pk: {delivery.consumer: delivery.state for delivery in grouped.get(str(pk), [])}
        for pk in upload_pks
    }


class UploadChangeList(ChangeList):
    """Loads every listed upload's consumer states with one query after the page's."""

    def get_results(self, request: HttpRequest) -> None:
        super().get_results(request)
        states = ledger_states([upload.pk for upload in self.result_list])
        for upload in self.result_list:
            upload._delivery_states = states.get(upload.pk, {})


class DeliveryStateFilter(admin.SimpleListFilter):
    """Uploads by what their consumers did with them."""

    title = "consumer state"
    parameter_name = "delivery_state"

    def lookups(self, request: HttpRequest, model_admin: admin.ModelAdmin) -> list[tuple[str, str]]:
        return [
            ("dead", "a consumer gave up (dead)"),
            ("open", "a consumer is still working (pending or retrying)"),
            ("done", "every consumer done"),
        ]

    def queryset(self, request: HttpRequest, queryset: QuerySet[Upload]) -> QuerySet[Upload]:
        deliveries = _upload_deliveries(OuterRef("pk"))
        if self.value() == "dead":
            return queryset.filter(Exists(deliveries.filter(state=Delivery.State.DEAD)))
        if self.value() == "open":
            return queryset.filter(Exists(deliveries.filter(state__in=Delivery.OPEN_STATES)))
        if self.value() == "done":
            return queryset.filter(Exists(deliveries)).exclude(
                Exists(deliveries.exclude(state=Delivery.State.DONE))
            )
        return queryset


@admin.register(Upload)
class UploadAdmin(admin.ModelAdmin):
    list_display = (
        "original_name",
        "owner",
        "human_size",
        "content_type",
        "created_at",
        "delivery_states",
    )
    list_filter = (
        DeliveryStateFilter,
        "content_type",
        "created_at",
        ("owner", admin.RelatedOnlyFieldListFilter),
    )
    search_fields = ("original_name", "owner__username", "owner__email", "=sha256")
    list_select_related = ("owner",)
    fields = (
        "original_name",
        "owner",
        "file",
        "size",
        "content_type",
        "sha256",
        "created_at",
        "delivery_states",
        "events_link",
    )
    readonly_fields = fields
    date_hierarchy = "created_at"

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Uploads are created by their owners, through the web, the API or upload_file.
        return False

    def has_change_permission(self, request: HttpRequest, obj: Upload | None = None) -> bool:
        # An upload is immutable; the change page is a view with a Delete link.
        return False

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Upload], search_term: str
    ) -> tuple[QuerySet[Upload], bool]:
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        term = search_term.strip()
        if term.isdigit():
            # An upload id, as events and the API name uploads.
            results |= queryset.filter(pk=int(term))
        return results, may_have_duplicates

    def get_changelist(self, request: HttpRequest, **kwargs: object) -> type[ChangeList]:
        return UploadChangeList

    @admin.display(description="size", ordering="size")
    def human_size(self, upload: Upload) -> str:
        return filesizeformat(upload.size)

    @admin.display(description="consumers")
    def delivery_states(self, upload: Upload) -> str:
        states = getattr(upload, "_delivery_states", None)
        if states is None:
            states = ledger_states([upload.pk])[upload.pk]
        if not states:
            return "-"
        return format_html_join(
            ", ",
            '{}: <span style="color: {}" class="delivery-state-{}">{}</span>',
            (
                (consumer, STATE_COLOURS.get(state, "inherit"), state, state)
                for consumer, state in sorted(states.items())
            ),
        )

    @admin.display(description="events")
    def events_link(self, upload: Upload) -> str:
        url = reverse("admin:events_event_changelist")
        query = urlencode({"q": str(upload.pk)})
        return format_html('<a href="{}?{}">events about this upload</a>', url, query)

    def delete_model(self, request: HttpRequest, obj: Upload) -> None:
        self._delete(request, obj)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[Upload]) -> None:
        # The bulk "delete selected" action lands here: one delete_upload per upload,
        # so each one publishes its own file.deleted.
        for upload in queryset.select_related("owner"):
            self._delete(request, upload)

    def _delete(self, request: HttpRequest, upload: Upload) -> None:
        try:
            delete_upload(upload, actor=request.user)
        except UploadGone as exc:
            # Another admin (or the owner) was first; nothing more is recorded.
            self.message_user(request, f"{exc}; nothing was recorded again.", messages.WARNING)


@admin.register(ApiToken)
class ApiTokenAdmin(admin.ModelAdmin):
    """API tokens. The raw key is shown once, in the response to adding a token here.

    Only ``key_prefix`` is ever displayed afterwards; the hash is not a field of any form
    or page. A superuser may make a token for anyone; other staff only for themselves
    (a token acts as its user, so minting one for someone else would be acting as them).
    """

    list_display = ("key_prefix", "name", "user", "created_at", "last_used_at", "revoked_at")
    list_filter = (("revoked_at", admin.EmptyFieldListFilter), "created_at")
    search_fields = ("key_prefix", "name", "user__username")
    list_select_related = ("user",)
    readonly_fields = ("key_prefix", "created_at", "last_used_at", "revoked_at")
    actions = ("revoke_tokens",)

    def get_queryset(self, request: HttpRequest) -> QuerySet[ApiToken]:
        # A token acts as its user: staff who are not superusers see, edit and revoke
        # only their own, whatever model permissions they hold.
        tokens = super().get_queryset(request)
        if request.user.is_superuser:
            return tokens
        return tokens.filter(user=request.user)

    def get_fields(self, request: HttpRequest, obj: ApiToken | None = None) -> tuple[str, ...]:
        if obj is None:
            return ("user", "name")
        return ("user", "name", *self.readonly_fields)

    def get_readonly_fields(
        self, request: HttpRequest, obj: ApiToken | None = None
    ) -> tuple[str, ...]:
        # A token never changes hands; only its label can be edited.
        if obj is None:
            return ()
        return ("user", *self.readonly_fields)

    def formfield_for_foreignkey(self, db_field: Any, request: HttpRequest, **kwargs: Any) -> Any:
        if db_field.name == "user" and not request.user.is_superuser:
            kwargs["queryset"] = get_user_model().objects.filter(pk=request.user.pk)
        return super().formfield_for_foreignkey(db_field, request, **kwargs)

    def save_model(self, request: HttpRequest, obj: ApiToken, form: object, change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        # The form offers only the staff member's own account; this is the rule itself.
        if not request.user.is_superuser and obj.user_id != request.user.pk:
            raise PermissionDenied("only a superuser may make a token for another user")
        obj._raw_key = issue_key(obj)
        super().save_model(request, obj, form, change)

    def response_add(
        self, request: HttpRequest, obj: ApiToken, post_url_continue: str | None = None
    ) -> HttpResponse:
        # The key goes in this response only, never through the messages framework: its
        # cookie is signed, not encrypted, and outlives the page.
        response = TemplateResponse(
            request,
            "admin/uploads/apitoken/created.html",
            {
                **self.admin_site.each_context(request),
                "opts": self.opts,
                "title": "API token created",
                "token": obj,
                "raw_key": getattr(obj, "_raw_key", ""),
            },
        )
        add_never_cache_headers(response)
        response["Referrer-Policy"] = "no-referrer"
        return response

    # Revoking changes the token, so it takes the change permission, never view alone.
    @admin.action(description="Revoke selected API tokens", permissions=["change"])
    def revoke_tokens(self, request: HttpRequest, queryset: QuerySet[ApiToken]) -> None:
        tokens = list(queryset.filter(revoked_at__isnull=True))
        for token in tokens:
            revoke_api_token(token)
        self.message_user(request, f"Revoked {len(tokens)} API token(s).", messages.SUCCESS)
