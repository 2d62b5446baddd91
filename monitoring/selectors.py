"""Reads over the ledger that several callers share (commands, admin, views)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from django.db.models import Avg, Count, F, FloatField, Func, Max, Min, Q, QuerySet, Sum
from django.db.models.functions import TruncMinute
from django.utils import timezone

from events.breaker import open_breakers
from events.models import ConsumerState, Delivery, Event
from events.registry import all_consumers

# A delivery in any other state still waits for its consumer.
FINISHED_STATES = (Delivery.State.DONE, Delivery.State.DEAD)


def delivery_state_names() -> list[str]:
    """Every delivery state, ``done`` first, then the model's order (a new state appears by itself)."""
    return [Delivery.State.DONE, *(s for s in Delivery.State.values if s != Delivery.State.DONE)]


# ``event_status``, the pages and the API show the public states (docs/architecture.md: done, pending,
# retrying, dead): there a ``running`` delivery (an attempt holds its lease) is not done
# yet and counts as pending. Admin and /metrics show every stored state.
PUBLIC_STATE_OF = {Delivery.State.RUNNING: Delivery.State.PENDING}


def public_state_names() -> list[str]:
    """The states ``event_status`` reports, in ``delivery_state_names()`` order."""
    return [state for state in delivery_state_names() if state not in PUBLIC_STATE_OF]


def public_counts(counts: dict[str, int]) -> dict[str, int]:
    """Per-state counts folded into the public states (``running`` into ``pending``)."""
    public = dict.fromkeys(public_state_names(), 0)
    for state, n in counts.items():
        public[PUBLIC_STATE_OF.get(state, state)] += n
    return public


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
    """Consumer → its ``ConsumerLedger``, from two small aggregate queries.

    Registered consumers come first, in registry order, with zeros when they have no
    delivery yet; consumers that are no longer registered but still have rows follow.
    """
    # Counts: a GROUP BY that the (consumer, state) index answers alone. Asking it for
    # the oldest created_at too would read every row of the table (about 3x slower at
    # 80k deliveries on SQLite), so the oldest waiting one is its own query, over the
    # waiting rows only (the partial index on open states).
    per_state = {
        (row["consumer"], row["state"]): row["n"]
        for row in Delivery.objects.values("consumer", "state").annotate(n=Count("pk")).order_by()
    }
    oldest = {
        row["consumer"]: row["oldest"]
        for row in Delivery.objects.filter(state__in=waiting_state_names())
        .values("consumer")
        .annotate(oldest=Min("created_at"))
        .order_by()
    }
    registered = [c.name for c in all_consumers()]
    names = registered + sorted({consumer for consumer, _ in per_state} - set(registered))
    return {
        name: ConsumerLedger(
            counts={state: per_state.get((name, state), 0) for state in delivery_state_names()},
            oldest_waiting_at=oldest.get(name),
        )
        for name in names
    }


def _seconds_since(since: dt.datetime | None, now: dt.datetime) -> float | None:
    return round(max((now - since).total_seconds(), 0.0), 3) if since else None


def _seconds_until(when: dt.datetime | None, now: dt.datetime) -> float | None:
    return round(max((when - now).total_seconds(), 0.0), 3) if when else None


def consumer_controls(now: dt.datetime) -> dict[str, dict[str, Any]]:
    """Consumer → what holds it: ``paused``, ``paused_reason``, ``paused_seconds`` (how
    long, or ``None``) and ``breakers_open`` (a list of ``{"key", "failures",
    "open_seconds", "next_probe_seconds"}``, key ``""`` for the consumer's own breaker;
    the next probe is due when that is 0). Consumers held by nothing get ``not_held()``.
    Two small queries (``ConsumerState``, ``Breaker``)."""
    controls: dict[str, dict[str, Any]] = defaultdict(not_held)
    for state in ConsumerState.objects.filter(paused=True):
        controls[state.name].update(
            paused=True,
            paused_reason=state.paused_reason,
            paused_seconds=_seconds_since(state.paused_at, now),
        )
    for breaker in open_breakers():
        controls[breaker.consumer]["breakers_open"].append(
            {
                "key": breaker.key,
                "failures": breaker.failures,
                "open_seconds": _seconds_since(breaker.opened_at, now),
                "next_probe_seconds": _seconds_until(breaker.probe_at, now),
            }
        )
    return controls


def not_held() -> dict[str, Any]:
    """The controls of a consumer nothing holds: not paused, no breaker open."""
    return {"paused": False, "paused_reason": "", "paused_seconds": None, "breakers_open": []}


def pipeline_status(ledgers: dict[str, ConsumerLedger] | None = None) -> dict[str, Any]:
    """The figures of ``event_status --json``: events, and per consumer its ledger states.

    The states are the public ones (``public_counts``). ``oldest_pending_seconds`` is the
    age of the oldest delivery still waiting (any state but done and dead), or ``None``
    when nothing waits. ``paused`` (with ``paused_reason`` and ``paused_seconds``) and
    ``breakers_open`` say what holds the consumer (``consumer_controls``). A caller that
    already read ``ledger_by_consumer()`` passes it in.
    """
    now = timezone.now()
    if ledgers is None:
        ledgers = ledger_by_consumer()
    controls = consumer_controls(now)
    consumers = {
        name: {
            **public_counts(ledger.counts),
            "oldest_pending_seconds": ledger.oldest_waiting_seconds(now),
            **controls[name],
        }
        for name, ledger in ledgers.items()
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
    status: dict[str, Any],
    *,
    max_dead: int,
    max_waiting_seconds: float,
    max_paused_seconds: float | None = None,
    max_breaker_open_seconds: float = 0.0,
) -> list[str]:
    """One line per consumer limit broken in ``pipeline_status()`` figures.

    ``"indexing: 3 dead"`` when a consumer has more than ``max_dead`` dead deliveries,
    ``"audit: oldest waiting 912 s"`` when its oldest waiting delivery is older than
    ``max_waiting_seconds``, ``"notifications: paused 3600 s (smtp move)"`` when it has
    been paused longer than ``max_paused_seconds`` (``None``: a pause is no breach),
    ``"webhook_calls: breaker [7] open 95 s"`` for each breaker open longer than
    ``max_breaker_open_seconds``. An empty list means every consumer is within the limits.
    """
    lines = []
    for name, figures in status["consumers"].items():
        dead = figures[Delivery.State.DEAD]
        if dead > max_dead:
            lines.append(f"{name}: {dead} dead")
        waiting = figures["oldest_pending_seconds"]
        if waiting is not None and waiting > max_waiting_seconds:
            lines.append(f"{name}: oldest waiting {int(waiting)} s")
        paused = figures.get("paused_seconds")
        if max_paused_seconds is not None and paused is not None and paused > max_paused_seconds:
            reason = figures.get("paused_reason")
            lines.append(f"{name}: paused {int(paused)} s" + (f" ({reason})" if reason else ""))
        for breaker in figures.get("breakers_open", ()):
            opened = breaker["open_seconds"] or 0.0
            if opened > max_breaker_open_seconds:
                key = f" [{breaker['key']}]" if breaker["key"] else ""
                lines.append(f"{name}: breaker{key} open {int(opened)} s")
    return lines


# Deliveries are found through their event's time, which is indexed, rather than through
# ``completed_at``, which is not: a scrape then reads the last day's deliveries, not the
# whole ledger. A delivery done now for an event older than this is left out of latency
# figures (the oldest-waiting gauge has already shown that backlog).
RECENT_EVENT_HORIZON = dt.timedelta(days=1)


def recently_done(*, since: dt.datetime) -> QuerySet[Delivery]:
    """Deliveries done since ``since`` whose event occurred within ``RECENT_EVENT_HORIZON``
    before it."""
    # A subquery, not a join filter: it leads the planner to the event time index and
    # then each event's deliveries, instead of scanning the ledger.
    recent_events = Event.objects.filter(occurred_at__gte=since - RECENT_EVENT_HORIZON)
    return Delivery.objects.filter(
        event_id__in=recent_events.values("id"),
        state=Delivery.State.DONE,
        completed_at__gte=since,
    )


class SecondsBetween(Func):
    """``end - start`` in seconds, as a float, with each database's own arithmetic.

    Django's portable datetime subtraction calls a Python function per row on SQLite;
    ``julianday`` is SQLite's own (C) function, ``EXTRACT(EPOCH ...)`` PostgreSQL's.
    """

    output_field = FloatField()

    def __init__(self, end: str, start: str) -> None:
        super().__init__(F(end), F(start))

    def as_sqlite(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler,
            connection,
            template="((julianday(%(expressions)s)) * 86400.0)",
            arg_joiner=") - julianday(",
            **extra,
        )

    def as_postgresql(self, compiler: Any, connection: Any, **extra: Any) -> Any:
        return self.as_sql(
            compiler,
            connection,
            template="EXTRACT(EPOCH FROM (%(expressions)s))::double precision",
            arg_joiner=" - ",
            **extra,
        )


def _latency() -> SecondsBetween:
    """From the event to its delivery's completion, in seconds."""
    return SecondsBetween("completed_at", "event__occurred_at")


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
        f"le_{index}": Count("pk", filter=Q(latency__lte=bound))
        for index, bound in enumerate(bounds)
    }
    rows = (
        recently_done(since=since)
        .annotate(latency=_latency())
        .values("consumer")
        .annotate(n=Count("pk"), total=Sum("latency"), **counts)
        .order_by()
    )
    return {
        row["consumer"]: LatencyHistogram(
            buckets={bound: row[f"le_{index}"] for index, bound in enumerate(bounds)},
            count=row["n"],
            sum_seconds=max(row["total"] or 0.0, 0.0),
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
        recently_done(since=since)
        .annotate(minute=TruncMinute("completed_at"), latency=_latency())
        .values("consumer", "minute")
        .annotate(n=Count("pk"), avg=Avg("latency"), longest=Max("latency"))
        .order_by()
    )
    figures: dict[str, dict[dt.datetime, MinuteFigures]] = {}
    for row in rows:
        figures.setdefault(row["consumer"], {})[row["minute"]] = MinuteFigures(
            done=row["n"],
            avg_latency_seconds=max(row["avg"] or 0.0, 0.0),
            max_latency_seconds=max(row["longest"] or 0.0, 0.0),
        )
    return figures
