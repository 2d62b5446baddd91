"""Thin Celery adapters for housekeeping: each calls a service."""

from __future__ import annotations

from celery import shared_task

from housekeeping.retention import prune_old_events

# One run of the task stops well inside the default task time limits (100 s soft,
# 120 s hard): the events worker, which also runs the relay, is never held for long.
TASK_TIME_BUDGET_SECONDS = 60


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
