"""Small builders that tests share."""

from __future__ import annotations

import datetime as dt
import tracemalloc
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.db import transaction
from django.utils import timezone

from events.models import Delivery, Event
from events.outbox import record_event
from events.registry import consumers_for
from tests.probe.handlers import FAULT_EVENT, PROBE_EVENT
from uploads.events import FILE_DELETED, FILE_UPLOADED
from uploads.models import Upload
from uploads.services import create_upload

T = TypeVar("T")


def upload_consumers() -> list[str]:
    """The consumers an upload reaches, in registration order, as the registry has them.

    Tests compare against this instead of writing the names out, so a new consumer app
    leaves them green.
    """
    return [consumer.name for consumer in consumers_for(FILE_UPLOADED)]


def deletion_consumers() -> list[str]:
    """The consumers a ``file.deleted`` reaches: an upload's, and the storage consumer,
    which removes the stored file (``uploads/consumer.py``)."""
    return [consumer.name for consumer in consumers_for(FILE_DELETED)]


def upload_text(owner: User, text: str = "the quick brown fox", name: str = "notes.txt") -> Upload:
    """Upload a small text file through the real service."""
    return create_upload(owner=owner, file=ContentFile(text.encode(), name=name))


def publish_probe(**instructions: Any) -> Event:
    """Publish a ``test.probe`` event that tells the probe consumers how to behave."""
    payload = {"key": uuid.uuid4().hex, **instructions}
    with transaction.atomic():
        return record_event(event_type=PROBE_EVENT, aggregate_id="probe", payload=payload)


def publish_fault(**instructions: Any) -> Event:
    """Publish a ``test.fault`` event for the ``probe_fault`` consumer (2 s limit, 3 tries)."""
    payload = {"key": uuid.uuid4().hex, **instructions}
    with transaction.atomic():
        return record_event(event_type=FAULT_EVENT, aggregate_id="fault", payload=payload)


def states(event: Event) -> dict[str, str]:
    """Consumer → delivery state of one event, fresh from the database."""
    return dict(Delivery.objects.filter(event=event).values_list("consumer", "state"))


def settled(event: Event) -> dict[str, str] | None:
    """The states of ``event``'s deliveries once none is pending or retrying, else None."""
    current = states(event)
    return current if current and all(s in ("done", "dead") for s in current.values()) else None


def bulk_probe_events(count: int, *, state: str = "done", padding: int = 0) -> None:
    """``count`` stored probe events with done deliveries, written in bulk (fast)."""
    now = timezone.now()
    events = [
        Event(
            id=uuid.uuid4(),
            type=PROBE_EVENT,
            version=1,
            occurred_at=now - dt.timedelta(seconds=count - i),
            aggregate_id="probe",
            payload={"key": f"{i:08d}" + "x" * padding},
        )
        for i in range(count)
    ]
    Event.objects.bulk_create(events, batch_size=500)
    Delivery.objects.bulk_create(
        [
            Delivery(event=e, consumer=c, state=state)
            for e in events
            for c in ("probe", "probe_peer")
        ],
        batch_size=1000,
    )


def peak_memory_against_loading_the_log(run: Callable[[], T]) -> tuple[T, int, int]:
    """``(run's result, its peak allocation, what loading every event and delivery takes)``.

    Both in bytes, measured with ``tracemalloc``, the loading first so its memory is freed
    before ``run`` starts.
    """
    tracemalloc.start()
    try:
        everything: list[Any] = list(Event.objects.all())
        everything += list(Delivery.objects.all())
        _, loading_all = tracemalloc.get_traced_memory()
        del everything
        tracemalloc.reset_peak()
        tracemalloc.clear_traces()
        baseline, _ = tracemalloc.get_traced_memory()
        result = run()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return result, peak - baseline, loading_all
