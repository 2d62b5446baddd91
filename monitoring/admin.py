"""Admin for the event log and the delivery ledger, the events overview and bulk redrive.

History is read-only: events and delivery rows are never edited by hand. The only
writes are the two delivery actions, the bulk redrive and the overview's controls (pause
and resume a consumer, close a breaker or probe it now: ``housekeeping.controls``, each
recorded in the audit log); the first three go through
``housekeeping.replay`` (the bulk redrive through ``housekeeping.redrive``, in a task) so
a re-delivery takes the same path (ledger lock, dedupe, retries) as a first delivery.
The overview also heads the admin index (``admin/events/index.html``).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib import admin, messages
from django.core.exceptions import PermissionDenied
from django.db.models import QuerySet
from django.http import HttpRequest, HttpResponse, HttpResponseNotAllowed, HttpResponseRedirect
from django.template.response import TemplateResponse
from django.urls import URLPattern, path, reverse
from django.utils import timezone
from django.utils.html import format_html
from django.utils.http import url_has_allowed_host_and_scheme
from django.utils.text import Truncator

from events.control import find_open_breaker, parked_deliveries
from events.models import Delivery, DeliveryAttempt, Event
from housekeeping.controls import Control, Operator, run_control
from housekeeping.redrive import RedriveNotStarted, count_redrive, start_bulk_redrive
from housekeeping.replay import (
    ReplayReport,
    record_replay,
    redeliver_deliveries,
    redelivery_selection,
)
from monitoring.forms import BulkRedriveForm
from monitoring.overview import (
    can_bulk_redrive,
    can_control_consumers,
    can_view_overview,
    format_age,
    next_probe_at,
    overview_context,
)

OVERVIEW_TEMPLATE = "admin/events/overview.html"
# The project's admin index: the events overview on top of admin's list of models.
admin.site.index_template = "admin/events/index.html"
CHANGE_LIST_TEMPLATE = "admin/events/change_list_with_overview.html"
BULK_REDRIVE_TEMPLATE = "admin/events/bulk_redrive.html"
CLOSE_BREAKER_TEMPLATE = "admin/events/close_breaker.html"


class ReadOnlyAdmin(admin.ModelAdmin):
    """No add, change or delete for anyone, superusers included: records, not data."""

    # A million-row log: skip the unfiltered COUNT(*) that each filtered page would add.
    show_full_result_count = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


def delivery_link(delivery: Delivery) -> str:
    url = reverse("admin:events_delivery_change", args=[delivery.pk])
    return format_html('<a href="{}">#{}</a>', url, delivery.pk)


class DeliveryInline(admin.TabularInline):
    model = Delivery
    fields = (
        "link",
        "consumer",
        "state",
        "attempts",
        "last_error",
        "created_at",
        "enqueued_at",
        "retry_at",
        "completed_at",
        "updated_at",
    )
    readonly_fields = fields
    extra = 0
    can_delete = False
    ordering = ("pk",)

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    @admin.display(description="delivery")
    def link(self, delivery: Delivery) -> str:
        return delivery_link(delivery)


@admin.register(Event)
class EventAdmin(ReadOnlyAdmin):
    list_display = ("id", "type", "version", "aggregate_id", "actor", "occurred_at")
    list_filter = ("type", "version")
    search_fields = ("=id", "=aggregate_id", "=correlation_id")
    date_hierarchy = "occurred_at"
    inlines = [DeliveryInline]
    change_list_template = CHANGE_LIST_TEMPLATE

    def get_urls(self) -> list[URLPattern]:
        overview = path(
            "overview/",
            self.admin_site.admin_view(self.overview_view),
            name="events_overview",
        )
        control = path(
            "consumer-control/",
            self.admin_site.admin_view(self.consumer_control_view),
            name="events_consumer_control",
        )
        return [overview, control, *super().get_urls()]

    def consumer_control_view(self, request: HttpRequest) -> HttpResponse:
        """POST ``consumer`` and ``action``: ``pause`` (with a ``reason``), ``resume``,
        ``close-breaker`` or ``probe-breaker`` (with the breaker's ``key``). The overview's
        controls, through ``housekeeping.controls`` as ``consumers`` runs them, recorded in
        the audit log. Closing a breaker asks first: without ``confirmed=yes`` the answer
        is a page that says what closing will send, and changes nothing."""
        if not can_control_consumers(request.user):
            raise PermissionDenied
        if request.method != "POST":
            return HttpResponseNotAllowed(["POST"])
        name = request.POST.get("consumer", "")
        action = request.POST.get("action", "")
        key = request.POST.get("key", "")
        back = self._back(request)
        try:
            if action == Control.CLOSE_BREAKER and request.POST.get("confirmed") != "yes":
                return self._confirm_close_breaker(request, name, key, back)
            text = run_control(
                action=action,
                consumer=name,
                key=key,
                reason=request.POST.get("reason", "").strip(),
                operator=Operator.of_user(request.user),  # type: ignore[arg-type]
            )
        except (LookupError, ValueError) as exc:
            self.message_user(request, str(exc).strip("'\""), messages.ERROR)
        else:
            self.message_user(request, text + ".", messages.SUCCESS)
        return HttpResponseRedirect(back)

    def _back(self, request: HttpRequest) -> str:
        """Where the control was: the admin index or the overview page (a path on this
        site, from the confirmation's ``next`` or the referer), else the overview."""
        back = request.POST.get("next") or request.META.get("HTTP_REFERER", "")
        if back and url_has_allowed_host_and_scheme(
            back, allowed_hosts={request.get_host()}, require_https=request.is_secure()
        ):
            parts = urlsplit(back)
            return parts.path + (f"?{parts.query}" if parts.query else "")
        return reverse("admin:events_overview")

    def _confirm_close_breaker(
        self, request: HttpRequest, name: str, key: str, back: str
    ) -> HttpResponse:
        """What closing the breaker does, and a form that does it (``confirmed=yes``)."""
        breaker = find_open_breaker(consumer=name, key=key)
        context = {
            **self.admin_site.each_context(request),
            "title": f"Close breaker {breaker.name}?",
            "opts": self.model._meta,
            "breaker": breaker,
            "open_for": format_age((timezone.now() - breaker.opened_at).total_seconds()),
            "next_probe": next_probe_at(breaker.probe_at),
            "parked": parked_deliveries(consumer=name, key=key).count(),
            "reopens_after": settings.EVENTS_BREAKER_FAILURES,
            "back": back,
        }
        return TemplateResponse(request, CLOSE_BREAKER_TEMPLATE, context)

    def overview_view(self, request: HttpRequest) -> HttpResponse:
        """Per consumer, the ``event_status`` figures and charts of its last hour, and the
        oldest waiting delivery (the same figures head the admin index)."""
        if not can_view_overview(request.user):
            raise PermissionDenied
        context = {
            **self.admin_site.each_context(request),
            "title": "Events overview",
            "opts": self.model._meta,
            "can_bulk_redrive": can_bulk_redrive(request.user),
            "can_control_consumers": can_control_consumers(request.user),
            **overview_context(),
        }
        return TemplateResponse(request, OVERVIEW_TEMPLATE, context)


class DeliveryAttemptInline(admin.TabularInline):
    model = DeliveryAttempt
    fields = ("number", "outcome", "task_id", "worker", "started_at", "finished_at", "error")
    readonly_fields = fields
    extra = 0
    can_delete = False

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Delivery)
class DeliveryAdmin(ReadOnlyAdmin):
    # Enqueued and updated times are on each delivery's page: ten columns do not fit
    # beside admin's sidebars at 1280 px.
    list_display = (
        "pk",
        "consumer",
        "state",
        "attempts",
        "event_link",
        "event_type",
        "short_error",
        "completed_at",
    )
    list_filter = ("consumer", "state", "event__type")
    search_fields = ("=event__id", "=event__aggregate_id", "=task_id")
    list_select_related = ("event",)
    readonly_fields = (
        "event_link",
        "consumer",
        "state",
        "attempts",
        "last_error",
        "task_id",
        "created_at",
        "enqueued_at",
        "retry_at",
        "completed_at",
        "updated_at",
    )
    fields = readonly_fields
    inlines = [DeliveryAttemptInline]
    actions = ["redeliver_selected", "replay_to_consumer"]
    change_list_template = CHANGE_LIST_TEMPLATE

    def get_queryset(self, request: HttpRequest) -> QuerySet[Delivery]:
        return super().get_queryset(request).defer("event__payload")

    def changelist_view(
        self, request: HttpRequest, extra_context: dict[str, Any] | None = None
    ) -> HttpResponse:
        extra_context = {
            **(extra_context or {}),
            "can_bulk_redrive": self.has_redeliver_permission(request),
        }
        return super().changelist_view(request, extra_context)

    def get_urls(self) -> list[URLPattern]:
        bulk = path(
            "bulk-redrive/",
            self.admin_site.admin_view(self.bulk_redrive_view),
            name="events_delivery_bulk_redrive",
        )
        return [bulk, *super().get_urls()]

    def bulk_redrive_view(self, request: HttpRequest) -> HttpResponse:
        """Filter, see the count, confirm: then ``start_bulk_redrive`` runs it in a task.

        A GET with filter values shows what they select (nothing changes); the POST of the
        confirmation starts the redrive pinned to what was counted.
        """
        if not self.has_redeliver_permission(request):
            raise PermissionDenied
        count = None
        if request.method == "POST":
            form = BulkRedriveForm(request.POST)
            if form.is_valid() and form.cleaned_data["up_to_pk"] is not None:
                return self._start_bulk_redrive(request, form)
        elif request.GET:
            form = BulkRedriveForm(request.GET)
            if form.is_valid():
                count = count_redrive(form.redrive_filter())
        else:
            form = BulkRedriveForm()
        confirm = None
        if count is not None and count.total:
            # The same filter, hidden, with the count that pins it: what the POST starts.
            confirm = BulkRedriveForm(
                initial={
                    **form.cleaned_data,
                    "up_to_pk": count.up_to_pk,
                    "confirmed_count": count.total,
                }
            )
        context = {
            **self.admin_site.each_context(request),
            "title": "Bulk redrive",
            "opts": self.model._meta,
            "form": form,
            "count": count,
            "count_rows": sorted(count.by_consumer_state.items()) if count else [],
            "confirm": confirm,
            "description": form.redrive_filter().describe() if count is not None else "",
        }
        return TemplateResponse(request, BULK_REDRIVE_TEMPLATE, context)

    def _start_bulk_redrive(self, request: HttpRequest, form: BulkRedriveForm) -> HttpResponse:
        redrive = form.redrive_filter()
        confirmed = form.cleaned_data["confirmed_count"] or 0
        try:
            redrive_id = start_bulk_redrive(
                redrive=redrive,
                operator=request.user,  # type: ignore[arg-type]
                confirmed_count=confirmed,
            )
        except RedriveNotStarted as exc:
            self.message_user(
                request,
                f"The redrive was recorded but did not start: {exc}. Nothing was re-sent; "
                "try again once the broker is back.",
                messages.ERROR,
            )
        else:
            self.message_user(
                request,
                f"Bulk redrive {redrive_id} started: {confirmed} deliveries "
                f"({redrive.describe()}), re-sent in chunks by the events worker. "
                "It is recorded in the audit log.",
                messages.SUCCESS,
            )
        return HttpResponseRedirect(reverse("admin:events_delivery_changelist"))

    @admin.display(description="event", ordering="event__occurred_at")
    def event_link(self, delivery: Delivery) -> str:
        # The first 8 hex digits tell events apart on a page; the title has the whole id.
        url = reverse("admin:events_event_change", args=[delivery.event_id])
        full = str(delivery.event_id)
        return format_html('<a href="{}" title="{}">{}…</a>', url, full, full[:8])

    @admin.display(description="type", ordering="event__type")
    def event_type(self, delivery: Delivery) -> str:
        return delivery.event.type

    @admin.display(description="last error")
    def short_error(self, delivery: Delivery) -> str:
        return Truncator(delivery.last_error).chars(60)

    def has_redeliver_permission(self, request: HttpRequest) -> bool:
        # The change permission, which the read-only admin otherwise never uses.
        return can_bulk_redrive(request.user)

    @admin.action(
        description="Redeliver selected deliveries (dead or stuck ones; done ones are skipped)",
        permissions=["redeliver"],
    )
    def redeliver_selected(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        selection = redelivery_selection(queryset, force=False)
        report = redeliver_deliveries(deliveries=queryset, force=False)
        self._report(request, report, force=False, selection=selection)

    @admin.action(
        description="Replay selected deliveries to their consumer (done ones too)",
        permissions=["redeliver"],
    )
    def replay_to_consumer(self, request: HttpRequest, queryset: QuerySet[Delivery]) -> None:
        selection = redelivery_selection(queryset, force=True)
        report = redeliver_deliveries(deliveries=queryset, force=True)
        self._report(request, report, force=True, selection=selection)

    def _report(
        self,
        request: HttpRequest,
        report: ReplayReport,
        *,
        force: bool,
        selection: dict[str, object],
    ) -> None:
        """Tell the operator what the action did, and record it for the audit log."""
        tallies = report.consumers.values()
        dead = sum(t.reset_dead for t in tallies)
        done = sum(t.reset_done for t in tallies)
        resent = sum(t.resent for t in tallies)
        skipped = sum(t.skipped_done for t in tallies)
        text = (
            f"Re-sent {report.selected} deliveries: {dead} dead reset to pending, "
            f"{resent} open re-sent"
        )
        if force:
            text += f", {done} done reset to pending"
        if skipped:
            text += f"; skipped {skipped} already done (use “Replay … to their consumer”)"
        level = messages.SUCCESS
        if report.broker_failed:
            text += (
                f". The broker is unreachable: {report.unpublished} wait in the outbox "
                "for the relay"
            )
            level = messages.WARNING
        record_replay(
            selection=selection,
            mode=report.mode,
            operator=Operator.of_user(request.user),  # type: ignore[arg-type]
            outcome=text,
        )
        self.message_user(request, text + ".", level)
