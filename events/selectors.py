"""Reads over the ledger that several callers share (commands, admin, views)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import (
    Avg,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    Max,
    Min,
    Q,
    QuerySet,
    Sum,
)
from django.db.models.functions import TruncMinute
from django.utils import timezone

from events.models import Delivery, Event
from events.registry import all_consumers

# A delivery in any other state still waits for its consumer.
FINISHED_STATES = (Delivery.State.DONE, Delivery.State.DEAD)


def delivery_state_names() -> list[str]:
    """Every delivery state, ``done`` first, then the model's order (a new state appears by itself)."""
    return [Delivery.State.DONE, *(s for s in Delivery.State.values if s != Delivery.State.DONE)]


def waiting_state_names() -> list[str]:
    """The states of a delivery its consumer has not finished with (neither done nor dead)."""
    return [state for state in Delivery.State.values if state not in FINISHED_STATES]


@dataclass(frozen=True)
class ConsumerLedger:
    """One consumer's ledger figures: deliveries per state and its oldest waiting one."""

    counts: dict[str, int]
    oldest_waiting_at: dt.datetime | None

    def oldest_waiting_seconds(self, now: dt.datetime) -> float | None:
        """Age of the oldest delivery still waiting, or ``None`` when nothing waits."""
        if self.oldest_waiting_at is None:
            return None
        return round(max((now - self.oldest_waiting_at).total_seconds(), 0.0), 3)


def ledger_by_consumer() -> dict[str, ConsumerLedger]:
    """Consumer → its ``ConsumerLedger``, from one aggregate query over the ledger.

    Registered consumers come first, in registry order, with zeros when they have no
    delivery yet; consumers that are no longer registered but still have rows follow.
    """
    per_state: dict[tuple[str, str], int] = {}
    oldest: dict[str, dt.datetime] = {}
    waiting = set(waiting_state_names())
    # One GROUP BY (consumer, state) served by the (consumer, state) index; the oldest
    # waiting delivery is the smallest created_at among the waiting states' groups.
    rows = (
        Delivery.objects.values("consumer", "state")
        .annotate(n=Count("pk"), oldest=Min("created_at"))
        .order_by()
    )
    for row in rows:
        per_state[(row["consumer"], row["state"])] = row["n"]
        if row["state"] in waiting and row["oldest"] is not None:
            current = oldest.get(row["consumer"])
            oldest[row["consumer"]] = min(row["oldest"], current) if current else row["oldest"]
    registered = [c.name for c in all_consumers()]
    names = registered + sorted({consumer for consumer, _ in per_state} - set(registered))
    return {
        name: ConsumerLedger(
            counts={state: per_state.get((name, state), 0) for state in delivery_state_names()},
            oldest_waiting_at=oldest.get(name),
        )
        for name in names
    }


def pipeline_status() -> dict[str, Any]:
    """The figures of ``event_status --json``: events, and per consumer its ledger states.

    ``oldest_pending_seconds`` is the age of the oldest delivery still waiting (any state
    but done and dead), or ``None`` when nothing waits.
    """
    now = timezone.now()
    consumers = {
        name: {**ledger.counts, "oldest_pending_seconds": ledger.oldest_waiting_seconds(now)}
        for name, ledger in ledger_by_consumer().items()
    }
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


def events_in_chunks(events: QuerySet[Event], *, chunk_size: int) -> Iterator[list[Event]]:
    """``events`` in (occurred_at, id) order, by keyset, ``chunk_size`` at a time.

    Keyset rather than OFFSET: each page is an index range scan from the last row seen,
    so the millionth event costs what the first did, and rows appended (new uploads) or
    deleted (a prune) meanwhile do not shift the pages.
    """
    ordered = events.order_by("occurred_at", "id")
    last: Event | None = None
    while True:
        page = ordered
        if last is not None:
            page = page.filter(
                Q(occurred_at__gt=last.occurred_at)
                | Q(occurred_at=last.occurred_at, id__gt=last.id)
            )
        chunk = list(page[:chunk_size])
        if not chunk:
            return
        yield chunk
        if len(chunk) < chunk_size:
            return
        last = chunk[-1]


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


def status_breaches(
    status: dict[str, Any], *, max_dead: int, max_waiting_seconds: float
) -> list[str]:
    """One line per consumer limit broken in ``pipeline_status()`` figures.

    ``"indexing: 3 dead"`` when a consumer has more than ``max_dead`` dead deliveries,
    ``"audit: oldest waiting 912 s"`` when its oldest waiting delivery is older than
    ``max_waiting_seconds``. An empty list means every consumer is within the limits.
    """
    lines = []
    for name, figures in status["consumers"].items():
        dead = figures[Delivery.State.DEAD]
        if dead > max_dead:
            lines.append(f"{name}: {dead} dead")
        waiting = figures["oldest_pending_seconds"]
        if waiting is not None and waiting > max_waiting_seconds:
            lines.append(f"{name}: oldest waiting {int(waiting)} s")
    return lines


def _latency() -> ExpressionWrapper:
    """From the event to its delivery's completion, as a duration (SQLite and PostgreSQL)."""
    return ExpressionWrapper(
        F("completed_at") - F("event__occurred_at"), output_field=DurationField()
    )


@dataclass(frozen=True)
class LatencyHistogram:
    """Recent done deliveries of one consumer by latency: cumulative bucket counts."""

    buckets: dict[float, int]  # upper bound in seconds → deliveries at or below it
    count: int
    sum_seconds: float


def recent_latency(*, since: dt.datetime, bounds: Sequence[float]) -> dict[str, LatencyHistogram]:
    """Consumer → latency of its deliveries completed since ``since``, in one query.

    Each bucket is counted by the database (a filtered COUNT per bound), so the cost does
    not grow with the number of deliveries read back.
    """
    counts = {
        f"le_{index}": Count("pk", filter=Q(latency__lte=dt.timedelta(seconds=bound)))
        for index, bound in enumerate(bounds)
    }
    rows = (
        Delivery.objects.filter(state=Delivery.State.DONE, completed_at__gte=since)
        .annotate(latency=_latency())
        .values("consumer")
        .annotate(n=Count("pk"), total=Sum("latency"), **counts)
        .order_by()
    )
    return {
        row["consumer"]: LatencyHistogram(
            buckets={bound: row[f"le_{index}"] for index, bound in enumerate(bounds)},
            count=row["n"],
            sum_seconds=row["total"].total_seconds() if row["total"] is not None else 0.0,
        )
        for row in rows
    }


@dataclass(frozen=True)
class MinuteFigures:
    """Deliveries one consumer finished in one minute, and how long they took."""

    done: int
    avg_latency_seconds: float
    max_latency_seconds: float


def done_per_minute(*, since: dt.datetime) -> dict[str, dict[dt.datetime, MinuteFigures]]:
    """Consumer → minute → its ``MinuteFigures``, for deliveries done since ``since``.

    One GROUP BY (consumer, minute) query; minutes without a delivery are absent.
    """
    rows = (
        Delivery.objects.filter(state=Delivery.State.DONE, completed_at__gte=since)
        .annotate(minute=TruncMinute("completed_at"), latency=_latency())
        .values("consumer", "minute")
        .annotate(n=Count("pk"), avg=Avg("latency"), longest=Max("latency"))
        .order_by()
    )
    figures: dict[str, dict[dt.datetime, MinuteFigures]] = {}
    for row in rows:
        figures.setdefault(row["consumer"], {})[row["minute"]] = MinuteFigures(
            done=row["n"],
            avg_latency_seconds=_seconds(row["avg"]),
            max_latency_seconds=_seconds(row["longest"]),
        )
    return figures


def _seconds(value: dt.timedelta | float | None) -> float:
    if value is None:
        return 0.0
    if isinstance(value, dt.timedelta):
        return max(value.total_seconds(), 0.0)
    # SQLite averages the stored microseconds into a plain number.
    return max(float(value) / 1_000_000, 0.0)
