"""The naive baseline: what a team would write without the ledger and the outbox.

The producer stores the event (the handlers take one) and, on commit, calls
``task.delay(event_id)`` once per subscribed consumer: no delivery rows, no relay, no
claim, no dedupe. Each consumer's naive task loads the event and runs that consumer's
own handler from the registry in a transaction (a ``TwoStepHandler`` prepares first,
outside it), with the same queue count, acks late, reject on worker lost and time
limits as the real consumer task. Nothing in it is slowed down on purpose.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Mapping
from typing import Any
from unittest import mock

from celery import Task, shared_task
from django.db import transaction
from django.utils import timezone

from events.models import Event
from events.registry import Consumer, TwoStepHandler, all_consumers, get_consumer
from events.schemas import schemas

_tasks: dict[str, Task] = {}


def naive_queue(consumer: Consumer) -> str:
    """The queue of ``consumer``'s naive task: its own queue, under another name."""
    return f"bench.naive.{consumer.queue}"


def naive_task_name(consumer: Consumer) -> str:
    """The Celery name of ``consumer``'s naive task."""
    return f"bench.naive.{consumer.name}"


def create_naive_tasks() -> None:
    """One naive Celery task per registered consumer (called from the bench app's ready)."""
    for consumer in all_consumers():
        _tasks[consumer.name] = _create_naive_task(consumer)


def _create_naive_task(consumer: Consumer) -> Task:
    @shared_task(
        name=naive_task_name(consumer),
        queue=naive_queue(consumer),
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        time_limit=consumer.time_limit,
        soft_time_limit=consumer.soft_time_limit,
    )
    def handle_event(event_id: str) -> None:
        event = Event.objects.get(pk=event_id)
        envelope = schemas.upcast(event.to_envelope())
        # Looked up per call, as the real consumer task does.
        handler = get_consumer(consumer.name).handlers[event.type]
        if isinstance(handler, TwoStepHandler):
            prepared = handler.prepare(envelope)
            with transaction.atomic():
                handler.apply(envelope, prepared)
        else:
            with transaction.atomic():
                handler(envelope)

    return handle_event


def record_event_naively(
    *,
    event_type: str,
    aggregate_id: str | int,
    payload: Mapping[str, Any],
    actor: int | None = None,
    correlation_id: str = "",
    **ignored: Any,
) -> Event:
    """Store the event and ``delay`` one naive task per subscribed consumer on commit.

    Takes ``events``' ``record_event`` arguments, so the bench can put it in its place
    inside ``uploads.services.create_upload`` and keep the rest of the upload identical.
    """
    event = Event.objects.create(
        id=uuid.uuid4(),
        type=event_type,
        version=schemas.current_version(event_type),
        occurred_at=timezone.now(),
        aggregate_id=str(aggregate_id),
        actor=actor,
        payload=dict(payload),
        correlation_id=correlation_id,
    )
    for consumer in all_consumers():
        if event_type in consumer.handlers:
            task = _tasks[consumer.name]
            transaction.on_commit(lambda task=task: task.delay(str(event.id)))
    return event


def record_no_event(**ignored: Any) -> None:
    """Record and publish nothing: the upload alone, for the latency baseline."""


def recording_without_publishing(record_event: Callable[..., Event]) -> Callable[..., Event]:
    """``record_event`` with every on-commit callback it registers dropped.

    The outbox rows are written as usual and nothing reaches the broker: the difference
    to the real ``record_event`` is what publishing costs the request.
    """

    def record(**kwargs: Any) -> Event:
        with mock.patch("django.db.transaction.on_commit"):
            return record_event(**kwargs)

    return record
