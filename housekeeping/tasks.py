"""Thin Celery adapters for housekeeping: each calls a service."""

from __future__ import annotations

from celery import shared_task
from celery.utils.log import get_task_logger

from housekeeping.redrive import (
    BULK_REDRIVE_TASK,
    RedriveFilter,
    run_bulk_redrive,
    send_redrive_task_now,
)
from housekeeping.retention import prune_old_events

logger = get_task_logger(__name__)

# One run of a long housekeeping task. The events worker runs the relay too, once a
# second (EVENTS_RELAY_INTERVAL_SECONDS), one task at a time: while a run holds it, due
# retries and lost messages wait, so a run stops after a few seconds and sends the rest
# behind the relay tasks queued meanwhile. Well inside the task time limits as well.
TASK_TIME_BUDGET_SECONDS = 5
# Deliveries per transaction of a bulk redrive. Its work under the lock grows with the
# chunk (about 30 ms for 500 on SQLite on a busy 2-core machine, 7 ms for 100), and on
# SQLite every upload and claim waits that long meanwhile: 100 keeps each wait short.
REDRIVE_CHUNK_SIZE = 100


# Beat sends it once a day (config/settings/celery.py).
@shared_task(name="events.prune_events", ignore_result=True)
def prune_events_task() -> None:
    """Beat's daily retention run: ``prune_old_events`` on a worker of the events queue.

    A large first prune goes in runs of ``TASK_TIME_BUDGET_SECONDS``: each run that
    did not finish sends the task again, behind the relay tasks queued meanwhile.
    """
    report = prune_old_events(max_seconds=TASK_TIME_BUDGET_SECONDS)
    if report is not None and not report.finished:
        prune_events_task.apply_async(queue="events")


# Sent by ``housekeeping.redrive.start_bulk_redrive`` once an operator confirmed the count.
@shared_task(name=BULK_REDRIVE_TASK, ignore_result=True)
def bulk_redrive_task(redrive_id: str, redrive: dict, after_pk: int = 0) -> None:
    """Run a confirmed bulk redrive (``run_bulk_redrive``) on a worker of the events queue.

    Like the prune, in runs of ``TASK_TIME_BUDGET_SECONDS``: a run that did not finish
    sends the rest, from the last delivery id it reached, behind the relay tasks.
    """
    selection = RedriveFilter.from_json(redrive)
    report = run_bulk_redrive(
        redrive=selection,
        after_pk=after_pk,
        chunk_size=REDRIVE_CHUNK_SIZE,
        max_seconds=TASK_TIME_BUDGET_SECONDS,
    )
    logger.info(
        "bulk redrive %s: %d deliveries re-sent in %d chunks up to id %d%s",
        redrive_id,
        report.selected,
        report.chunks,
        report.last_pk,
        "" if report.finished else "; the rest goes on in the next run",
    )
    if not report.finished:
        send_redrive_task_now(redrive_id=redrive_id, redrive=selection, after_pk=report.last_pk)
