"""Small builders that tests share."""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import User
from django.core.files.base import ContentFile
from django.db import transaction

from events.models import Delivery, Event
from events.outbox import record_event
from tests.probe.handlers import FAULT_EVENT, PROBE_EVENT
from uploads.models import Upload
from uploads.services import create_upload


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
