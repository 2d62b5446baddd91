"""Reads over the ledger that several callers share (commands, admin, views)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from django.db.models import Count, Min, Q
from django.utils import timezone

from events.models import Delivery, Event
from events.registry import all_consumers


def pipeline_status() -> dict[str, Any]:
    """The figures of ``event_status --json``: events, and per consumer its ledger states.

    The public states are done, pending, retrying and dead: a ``running`` delivery (an
    attempt holds its lease) counts as pending, as it is not done yet.
    ``oldest_pending_seconds`` is the age of the oldest delivery not finished yet, or
    ``None`` when nothing waits.
    """
    now = timezone.now()
    per_state = {
        (row["consumer"], row["state"]): row["n"]
        for row in Delivery.objects.values("consumer", "state").annotate(n=Count("pk")).order_by()
    }
    oldest = {
        row["consumer"]: row["oldest"]
        for row in Delivery.objects.filter(state__in=Delivery.OPEN_STATES)
        .values("consumer")
        .annotate(oldest=Min("created_at"))
        .order_by()
    }
    registered = [c.name for c in all_consumers()]
    names = registered + sorted({consumer for consumer, _ in per_state} - set(registered))
    consumers = {}
    for name in names:
        figures: dict[str, Any] = {
            state: per_state.get((name, state), 0) for state in Delivery.State.values
        }
        figures["pending"] += figures.pop(Delivery.State.RUNNING)
        figures = {key: figures[key] for key in ("done", "pending", "retrying", "dead")}
        oldest_at = oldest.get(name)
        figures["oldest_pending_seconds"] = (
            round((now - oldest_at).total_seconds(), 3) if oldest_at else None
        )
        consumers[name] = figures
    unenqueued = (
        Event.objects.filter(
            Q(deliveries__state__in=Delivery.OPEN_STATES, deliveries__enqueued_at__isnull=True)
        )
        .distinct()
        .count()
    )
    return {
        "events": {"total": Event.objects.count(), "unenqueued": unenqueued},
        "consumers": consumers,
    }


def latest_deliveries_for_aggregates(
    aggregate_ids: Iterable[str | int], *, event_type: str
) -> dict[str, list[Delivery]]:
    """Aggregate id → the deliveries of its latest ``event_type`` event, in one query.

    Replays reuse the stored event, so an aggregate normally has one event of a type;
    when it has more, the latest (by ``occurred_at``, then ``recorded_at``) is current.
    """
    ids = [str(aggregate_id) for aggregate_id in aggregate_ids]
    if not ids:
        return {}
    rows = (
        Delivery.objects.filter(event__aggregate_id__in=ids, event__type=event_type)
        .select_related("event")
        .only(
            "consumer",
            "state",
            "attempts",
            "last_error",
            "event__id",
            "event__aggregate_id",
            "event__occurred_at",
            "event__recorded_at",
        )
        .order_by("event__occurred_at", "event__recorded_at", "event__id", "pk")
    )
    latest_event: dict[str, Any] = {}
    grouped: dict[str, list[Delivery]] = {}
    for delivery in rows:
        aggregate_id = delivery.event.aggregate_id
        if latest_event.get(aggregate_id) != delivery.event_id:
            latest_event[aggregate_id] = delivery.event_id
            grouped[aggregate_id] = []
        grouped[aggregate_id].append(delivery)
    return grouped
