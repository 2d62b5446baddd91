"""Retention: delete old events whose deliveries are finished, with every row kept for them.

The event log would otherwise grow forever. An event goes when it is older than the
cut-off and every one of its deliveries is ``done``; one with a ``dead`` delivery is kept
longer (``EVENTS_DEAD_RETENTION_DAYS``, for replay), then goes too; one with a delivery
still open (pending, retrying, running) never goes. In the same transaction as the
event go its deliveries, their attempts and each consumer's own rows for it
(``Consumer.forget_events``: mails claimed, webhook calls, index tombstones), since a
pruned event can no longer be replayed. The audit log is never touched; its chain does
not reference the event log, so ``verify_audit`` keeps passing.

Memory stays flat: events are read by keyset on ``(occurred_at, id)``, ``chunk_size``
ids at a time, and each chunk is deleted in its own short transaction with a fixed
number of statements.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
import uuid
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import Exists, OuterRef, Q, QuerySet
from django.utils import timezone

from events.models import Delivery, DeliveryAttempt, Event
from events.registry import Forgotten, all_consumers
from housekeeping.progress import ProgressCallback
from housekeeping.selectors import events_in_chunks

logger = logging.getLogger(__name__)

DEFAULT_CHUNK_SIZE = 500


@dataclass
class PruneReport:
    """What a prune deleted (or, in a dry run, would delete)."""

    cutoff: dt.datetime
    dry_run: bool
    events: int = 0
    deliveries: int = 0
    attempts: int = 0
    # The consumers' own rows deleted with the events, and by age.
    consumer_rows: int = 0
    # Older than the cut-off but kept: a delivery is still waiting, or dead and younger
    # than the dead cut-off.
    kept: int = 0
    # False when the time budget ran out first: what is left waits for the next run.
    finished: bool = True


def _with_delivery(*states: str) -> Exists:
    return Exists(Delivery.objects.filter(event=OuterRef("pk"), state__in=states))


def _keeps(*, dead_cutoff: dt.datetime) -> Q:
    """What keeps an old event: an open delivery, or a dead one younger than ``dead_cutoff``."""
    return _with_delivery(*Delivery.OPEN_STATES) | (
        Q(occurred_at__gte=dead_cutoff) & _with_delivery(Delivery.State.DEAD)
    )


def prunable_events(
    *, cutoff: dt.datetime, dead_cutoff: dt.datetime | None = None
) -> QuerySet[Event]:
    """Events before ``cutoff`` whose deliveries are all ``done``, or all finished (``done``
    or ``dead``) when they are also before ``dead_cutoff`` (default: dead ones are kept)."""
    dead_cutoff = min(dead_cutoff or _DAWN, cutoff)
    return Event.objects.filter(occurred_at__lt=cutoff).exclude(_keeps(dead_cutoff=dead_cutoff))


# Before every event: a dead cut-off that keeps every event with a dead delivery.
_DAWN = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def count_prunable(*, cutoff: dt.datetime, dead_cutoff: dt.datetime | None = None) -> int:
    """How many events a prune at ``cutoff`` would delete: the total of a progress bar."""
    return prunable_events(cutoff=cutoff, dead_cutoff=dead_cutoff).count()


def cutoff_for(days: int, *, now: dt.datetime | None = None) -> dt.datetime:
    """The moment ``days`` days before ``now``: events that occurred before it are old."""
    return (now or timezone.now()) - dt.timedelta(days=days)


def prune_events(
    *,
    cutoff: dt.datetime,
    dead_cutoff: dt.datetime | None = None,
    dry_run: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: ProgressCallback | None = None,
    max_seconds: float | None = None,
) -> PruneReport:
    """Delete the ``prunable_events`` with their deliveries, attempts and consumer rows;
    ``dry_run`` counts and deletes nothing.

    Each chunk is re-checked inside its transaction, so a delivery that a replay reset
    to pending after the chunk was read keeps its event. ``on_progress`` receives the
    number of events handled so far after each chunk. With ``max_seconds``, it stops
    after the chunk during which that much time has passed (``finished`` is then False).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    report = PruneReport(cutoff=cutoff, dry_run=dry_run)
    dead_cutoff = min(dead_cutoff or _DAWN, cutoff)
    started = time.monotonic()
    seen = 0
    rows = prunable_events(cutoff=cutoff, dead_cutoff=dead_cutoff).only("id", "occurred_at")
    for chunk in events_in_chunks(rows, chunk_size=chunk_size):
        ids = [event.pk for event in chunk]
        if dry_run:
            report.events += len(ids)
            report.deliveries += Delivery.objects.filter(event_id__in=ids).count()
            report.attempts += DeliveryAttempt.objects.filter(delivery__event_id__in=ids).count()
        else:
            _delete_chunk(
                [event.pk for event in chunk if event.occurred_at >= dead_cutoff],
                [event.pk for event in chunk if event.occurred_at < dead_cutoff],
                report,
            )
        seen += len(ids)
        if on_progress is not None:
            on_progress(seen)
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            report.finished = False
            break
    report.kept = (
        Event.objects.filter(occurred_at__lt=cutoff).filter(_keeps(dead_cutoff=dead_cutoff)).count()
    )
    return report


def _delete_chunk(
    done_only: list[uuid.UUID], done_or_dead: list[uuid.UUID], report: PruneReport
) -> None:
    """Delete one chunk: ``done_only`` events if all their deliveries are still done,
    ``done_or_dead`` ones (past the dead cut-off) if none is open."""
    with transaction.atomic():
        # Lock the chunk's deliveries, then keep only events none of whose deliveries
        # changed meanwhile (a replay may have reset one since the chunk was read).
        states = (
            Delivery.objects.select_for_update()
            .filter(event_id__in=done_only + done_or_dead)
            .order_by("pk")
        )
        allowed = {pk: {Delivery.State.DONE} for pk in done_only}
        allowed.update({pk: {Delivery.State.DONE, Delivery.State.DEAD} for pk in done_or_dead})
        kept = {
            event_id
            for event_id, state in states.values_list("event_id", "state")
            if state not in allowed[event_id]
        }
        ids = [pk for pk in allowed if pk not in kept]
        if not ids:
            return
        forgetting = [c.forget_events for c in all_consumers() if c.forget_events is not None]
        if forgetting:
            pruned = _forgotten(ids)
            report.consumer_rows += sum(forget(pruned) for forget in forgetting)
        # Children first, by hand, one DELETE ... WHERE ... IN each. ``_raw_delete``
        # skips Django's deletion collector, which would load every row and delete in
        # batches of 100; nothing else references these rows (no signals, and the only
        # cascades, deliveries and attempts, are deleted right here, in order).
        attempts = DeliveryAttempt.objects.filter(delivery__event_id__in=ids)
        report.attempts += attempts.delete()[0]  # already a single DELETE (no dependents)
        deliveries = Delivery.objects.filter(event_id__in=ids)
        report.deliveries += deliveries._raw_delete(deliveries.db)
        events = Event.objects.filter(pk__in=ids)
        report.events += events._raw_delete(events.db)


def _forgotten(ids: list[uuid.UUID]) -> Forgotten:
    """The events ``ids`` as consumers' ``forget_events`` receive them."""
    events = [event.to_envelope() for event in Event.objects.filter(pk__in=ids)]
    aggregates = {envelope.aggregate_id for envelope in events}
    still_told = set(
        Event.objects.filter(aggregate_id__in=aggregates)
        .exclude(pk__in=ids)
        .values_list("aggregate_id", flat=True)
    )
    return Forgotten(events=events, aggregates_gone=frozenset(aggregates - still_told))


def prune_old_events(*, max_seconds: float | None = None) -> PruneReport | None:
    """Apply ``EVENTS_RETENTION_DAYS`` (0 keeps everything, and returns ``None``)."""
    days = settings.EVENTS_RETENTION_DAYS
    if days <= 0:
        return None
    cutoff = cutoff_for(days)
    report = prune_events(
        cutoff=cutoff,
        dead_cutoff=cutoff_for(max(days, settings.EVENTS_DEAD_RETENTION_DAYS)),
        chunk_size=DEFAULT_CHUNK_SIZE,
        max_seconds=max_seconds,
    )
    report.consumer_rows += prune_consumer_rows(cutoff=cutoff)
    logger.info(
        "pruned %s events, %s deliveries, %s attempts, %s consumer rows older than %s days; "
        "kept %s unfinished",
        report.events,
        report.deliveries,
        report.attempts,
        report.consumer_rows,
        days,
        report.kept,
    )
    return report


def prune_consumer_rows(*, cutoff: dt.datetime) -> int:
    """Each consumer's rows older than ``cutoff`` that no event keys (``prune_before``)."""
    return sum(
        consumer.prune_before(cutoff)
        for consumer in all_consumers()
        if consumer.prune_before is not None
    )
