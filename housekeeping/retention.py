"""Retention: delete old events whose deliveries are all done, with their ledger rows.

The event log would otherwise grow forever. An event goes only when it is older than
the cut-off *and* every one of its deliveries is ``done``: anything still waiting
(pending, retrying, running) or ``dead`` stays, so nothing an operator may still need
to replay disappears. The audit log is another app's table and is never touched; its
chain does not reference the event log, so ``verify_audit`` keeps passing.

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
from django.db.models import Exists, OuterRef, QuerySet
from django.utils import timezone

from events.models import Delivery, DeliveryAttempt, Event
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
    # Older than the cut-off but kept: a delivery is still waiting or dead.
    kept: int = 0
    # False when the time budget ran out first: what is left waits for the next run.
    finished: bool = True


def _unfinished(event_ref: OuterRef) -> Exists:
    return Exists(Delivery.objects.filter(event=event_ref).exclude(state=Delivery.State.DONE))


def prunable_events(*, cutoff: dt.datetime) -> QuerySet[Event]:
    """Events that occurred before ``cutoff`` whose deliveries are all ``done``."""
    return Event.objects.filter(occurred_at__lt=cutoff).exclude(_unfinished(OuterRef("pk")))


def count_prunable(*, cutoff: dt.datetime) -> int:
    """How many events a prune at ``cutoff`` would delete: the total of a progress bar."""
    return prunable_events(cutoff=cutoff).count()


def cutoff_for(days: int, *, now: dt.datetime | None = None) -> dt.datetime:
    """The moment ``days`` days before ``now``: events that occurred before it are old."""
    return (now or timezone.now()) - dt.timedelta(days=days)


def prune_events(
    *,
    cutoff: dt.datetime,
    dry_run: bool = False,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    on_progress: ProgressCallback | None = None,
    max_seconds: float | None = None,
) -> PruneReport:
    """Delete events older than ``cutoff`` whose deliveries are all done, with those
    deliveries and their attempts; ``dry_run`` counts and deletes nothing.

    Each chunk is re-checked inside its transaction, so a delivery that a replay reset
    to pending after the chunk was read keeps its event. ``on_progress`` receives the
    number of events handled so far after each chunk. With ``max_seconds``, it stops
    after the chunk during which that much time has passed (``finished`` is then False).
    """
    if chunk_size < 1:
        raise ValueError("chunk_size must be positive")
    report = PruneReport(cutoff=cutoff, dry_run=dry_run)
    started = time.monotonic()
    seen = 0
    rows = prunable_events(cutoff=cutoff).only("id", "occurred_at")
    for chunk in events_in_chunks(rows, chunk_size=chunk_size):
        ids = [event.pk for event in chunk]
        if dry_run:
            report.events += len(ids)
            report.deliveries += Delivery.objects.filter(event_id__in=ids).count()
            report.attempts += DeliveryAttempt.objects.filter(delivery__event_id__in=ids).count()
        else:
            _delete_chunk(ids, report)
        seen += len(ids)
        if on_progress is not None:
            on_progress(seen)
        if max_seconds is not None and time.monotonic() - started >= max_seconds:
            report.finished = False
            break
    report.kept = (
        Event.objects.filter(occurred_at__lt=cutoff).filter(_unfinished(OuterRef("pk"))).count()
    )
    return report


def _delete_chunk(ids: list[uuid.UUID], report: PruneReport) -> None:
    with transaction.atomic():
        # Lock the chunk's deliveries, then keep only events none of whose deliveries
        # left ``done`` meanwhile (a replay may have reset one since the chunk was read).
        states = Delivery.objects.select_for_update().filter(event_id__in=ids).order_by("pk")
        unfinished = {
            event_id
            for event_id, state in states.values_list("event_id", "state")
            if state != Delivery.State.DONE
        }
        ids = [pk for pk in ids if pk not in unfinished]
        if not ids:
            return
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


def prune_old_events(*, max_seconds: float | None = None) -> PruneReport | None:
    """Apply ``EVENTS_RETENTION_DAYS`` (0 keeps everything, and returns ``None``)."""
    days = settings.EVENTS_RETENTION_DAYS
    if days <= 0:
        return None
    report = prune_events(
        cutoff=cutoff_for(days), chunk_size=DEFAULT_CHUNK_SIZE, max_seconds=max_seconds
    )
    logger.info(
        "pruned %s events, %s deliveries, %s attempts older than %s days; kept %s unfinished",
        report.events,
        report.deliveries,
        report.attempts,
        days,
        report.kept,
    )
    return report
