"""The bare Celery baseline: a task that does nothing, with the app's own settings."""

from __future__ import annotations

from celery import shared_task


@shared_task(name="bench.noop", ignore_result=True, acks_late=True, reject_on_worker_lost=True)
def noop(delivery_id: int = 0, event_id: str = "", event_type: str = "") -> None:
    """Do nothing; takes the same arguments as a consumer task so messages weigh the same."""
