"""Bulk redrive: re-send every delivery a filter selects, counted and confirmed first.

An operator (admin's *Bulk redrive* page) picks consumers, states, a time range of the
events and a text in the last error, sees how many deliveries that selects, and confirms.
``start_bulk_redrive`` then records an ``operator.redrive`` event, which the audit
consumer chains into the audit log with the operator and the filter, and sends the
``housekeeping.bulk_redrive`` task to the ``events`` queue. The task
(``run_bulk_redrive``) goes through the selection with ``housekeeping.replay``'s
``redeliver_deliveries``: by delivery id, one short transaction per chunk, publishing
after each commit, so however large the redrive no lock is held for long and the
deliveries take the very path a single redeliver takes (same reset, same publish, the
relay for anything the broker refused).

The confirmed selection is pinned by ``up_to_pk``, the newest delivery id when it was
counted: the deliveries of events stored after the operator confirmed are not swept up
unseen.
"""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from dataclasses import dataclass, replace
from typing import Any

from celery import current_app
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction
from django.db.models import Count, Max, QuerySet
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from events import record_event
from events.models import Delivery
from events.registry import all_consumers, get_consumer
from housekeeping.events import OPERATOR_REDRIVE
from housekeeping.replay import DEFAULT_CHUNK_SIZE, ReplayReport, redeliver_deliveries

logger = logging.getLogger(__name__)

BULK_REDRIVE_TASK = "housekeeping.bulk_redrive"

# What a bulk redrive may select. Not ``running``: an attempt holds its lease, and the
# relay already re-sends one whose lease expired.
REDRIVE_STATES = (
    Delivery.State.DEAD,
    Delivery.State.RETRYING,
    Delivery.State.PENDING,
    Delivery.State.DONE,
)


class RedriveNotStarted(Exception):
    """The redrive was recorded but its task could not be sent (the broker is down)."""


@dataclass(frozen=True)
class RedriveFilter:
    """Which deliveries a bulk redrive re-sends.

    ``consumers`` empty means every registered one. ``since`` (inclusive) and ``until``
    (exclusive) bound the time the delivery's *event* occurred, as ``replay_events
    --since/--until`` do. ``error_contains`` matches ``last_error`` case-insensitively.
    ``up_to_pk`` leaves out deliveries created after the count was confirmed.
    Raises ``ValueError`` on an unknown consumer or state, or ``since`` not before ``until``.
    """

    consumers: tuple[str, ...] = ()
    states: tuple[str, ...] = (Delivery.State.DEAD,)
    since: dt.datetime | None = None
    until: dt.datetime | None = None
    error_contains: str = ""
    up_to_pk: int | None = None

    def __post_init__(self) -> None:
        for name in self.consumers:
            get_consumer(name)  # LookupError names the known ones
        unknown = sorted(set(self.states) - set(REDRIVE_STATES))
        if unknown or not self.states:
            raise ValueError(
                f"states must be some of {', '.join(REDRIVE_STATES)} (got {', '.join(unknown)})"
            )
        if self.since and self.until and self.since >= self.until:
            raise ValueError("since must be before until")

    @property
    def force(self) -> bool:
        """Whether ``done`` deliveries are selected: they are reset and run again."""
        return Delivery.State.DONE in self.states

    def to_json(self) -> dict[str, Any]:
        """The filter as JSON-safe values: the task's argument and the audit record."""
        return {
            "consumers": list(self.consumers),
            "states": list(self.states),
            "since": self.since.isoformat() if self.since else None,
            "until": self.until.isoformat() if self.until else None,
            "error_contains": self.error_contains,
            "up_to_pk": self.up_to_pk,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RedriveFilter:
        """The inverse of ``to_json``."""
        return cls(
            consumers=tuple(data.get("consumers") or ()),
            states=tuple(data.get("states") or (Delivery.State.DEAD,)),
            since=dt.datetime.fromisoformat(data["since"]) if data.get("since") else None,
            until=dt.datetime.fromisoformat(data["until"]) if data.get("until") else None,
            error_contains=data.get("error_contains") or "",
            up_to_pk=data.get("up_to_pk"),
        )

    def describe(self) -> str:
        """One line for people: ``dead deliveries of notifications, events from … ``."""
        parts = [
            f"{'/'.join(self.states)} deliveries of "
            + (", ".join(self.consumers) if self.consumers else "every consumer")
        ]
        if self.since:
            parts.append(f"events from {self.since.isoformat()}")
        if self.until:
            parts.append(f"events before {self.until.isoformat()}")
        if self.error_contains:
            parts.append(f"last error containing {self.error_contains!r}")
        return ", ".join(parts)


def redrive_selection(redrive: RedriveFilter) -> QuerySet[Delivery]:
    """The deliveries ``redrive`` selects, unordered."""
    registered = [consumer.name for consumer in all_consumers()]
    deliveries = Delivery.objects.filter(
        state__in=redrive.states, consumer__in=redrive.consumers or registered
    )
    if redrive.since is not None:
        deliveries = deliveries.filter(event__occurred_at__gte=redrive.since)
    if redrive.until is not None:
        deliveries = deliveries.filter(event__occurred_at__lt=redrive.until)
    if redrive.error_contains:
        deliveries = deliveries.filter(last_error__icontains=redrive.error_contains)
    if redrive.up_to_pk is not None:
        deliveries = deliveries.filter(pk__lte=redrive.up_to_pk)
    return deliveries.order_by()


@dataclass(frozen=True)
class RedriveCount:
    """What a filter selects now: per (consumer, state), the total, and the newest id."""

    by_consumer_state: dict[tuple[str, str], int]
    up_to_pk: int | None

    @property
    def total(self) -> int:
        return sum(self.by_consumer_state.values())


def count_redrive(redrive: RedriveFilter) -> RedriveCount:
    """Count what ``redrive`` selects, in one GROUP BY; ``up_to_pk`` pins the selection."""
    rows = (
        redrive_selection(redrive)
        .values("consumer", "state")
        .annotate(n=Count("pk"), newest=Max("pk"))
        .order_by("consumer", "state")
    )
    counts: dict[tuple[str, str], int] = {}
    newest: int | None = None
    for row in rows:
        counts[(row["consumer"], row["state"])] = row["n"]
        newest = max(newest or 0, row["newest"])
    return RedriveCount(by_consumer_state=counts, up_to_pk=newest)


def start_bulk_redrive(
    *, redrive: RedriveFilter, operator: AbstractBaseUser, confirmed_count: int
) -> uuid.UUID:
    """Record the operator's confirmed redrive for the audit log, then start its task.

    Must not run inside a transaction: the record commits first, so the audit log has
    every redrive that ran. Raises ``RedriveNotStarted`` when the task cannot be sent
    (the record then shows a redrive that did not start; nothing was re-sent).
    """
    if connection.in_atomic_block:
        raise RuntimeError("start_bulk_redrive() must not run inside a transaction")
    if redrive.up_to_pk is None:
        # Not pinned by a count: pin it now, so newer events' deliveries are left out.
        redrive = replace(redrive, up_to_pk=count_redrive(redrive).up_to_pk or 0)
    redrive_id = uuid.uuid4()
    with transaction.atomic():
        record_event(
            event_type=OPERATOR_REDRIVE,
            aggregate_id=str(redrive_id),
            actor=operator.pk,
            payload={
                "redrive_id": str(redrive_id),
                "operator": operator.get_username(),
                "filter": redrive.to_json(),
                "confirmed_count": confirmed_count,
            },
        )
    try:
        send_redrive_task_now(redrive_id=redrive_id, redrive=redrive, after_pk=0)
    except (OSError, KombuError, RedisError) as exc:
        raise RedriveNotStarted(f"the broker is unreachable: {exc}") from exc
    logger.info(
        "bulk redrive %s started by %s: %s (%d confirmed)",
        redrive_id,
        operator.get_username(),
        redrive.describe(),
        confirmed_count,
    )
    return redrive_id


def send_redrive_task_now(
    *, redrive_id: uuid.UUID | str, redrive: RedriveFilter, after_pk: int
) -> None:
    """Send (the rest of) a bulk redrive to the ``events`` worker; publishes at once."""
    current_app.send_task(
        BULK_REDRIVE_TASK,
        kwargs={"redrive_id": str(redrive_id), "redrive": redrive.to_json(), "after_pk": after_pk},
        queue="events",
    )


def run_bulk_redrive(
    *,
    redrive: RedriveFilter,
    after_pk: int = 0,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    max_seconds: float | None = None,
) -> ReplayReport:
    """Re-send what ``redrive`` selects, from delivery id ``after_pk`` on, in chunks.

    A delivery is re-checked under its chunk's lock: one no longer in a selected state
    (a worker finished it meanwhile) is left alone. With ``max_seconds``, stops after
    the chunk that used the budget up (``finished`` False, go on after ``last_pk``).
    """
    return redeliver_deliveries(
        deliveries=redrive_selection(redrive),
        force=redrive.force,
        chunk_size=chunk_size,
        after_pk=after_pk,
        states=redrive.states,
        max_seconds=max_seconds,
    )
