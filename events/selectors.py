"""Reads over the ledger that several callers share (commands, admin, views)."""

from __future__ import annotations

from typing import Any

from django.db.models import Count, Min, Q
from django.utils import timezone

from events.models import Delivery, Event
from events.registry import all_consumers


def pipeline_status() -> dict[str, Any]:
    """The figures of ``event_status --json``: events, and per consumer its ledger states.

    ``oldest_pending_seconds`` is the age of the oldest delivery still waiting (pending
    or retrying), or ``None`` when nothing waits.
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


def deliveries_for_aggregate(aggregate_id: str | int) -> dict[str, str]:
    """Consumer → state of the latest event about one aggregate (an upload)."""
    states: dict[str, str] = {}
    rows = (
        Delivery.objects.filter(event__aggregate_id=str(aggregate_id))
        .order_by("event__occurred_at", "pk")
        .values_list("consumer", "state")
    )
    for consumer, state in rows:
        states[consumer] = state
    return states
