"""Handlers whose behaviour the event payload dictates, to inject faults into a real worker."""

from __future__ import annotations

import os
import time
from pathlib import Path

from django.conf import settings

from events.exceptions import PermanentError, TransientError
from events.models import Delivery
from events.registry import TwoStepHandler
from events.schemas import Envelope
from tests.probe.models import ProbeEffect

PROBE_EVENT = "test.probe"


# Database connections this process has opened, counted by the ``connection_created``
# signal (tests.probe.apps), so a test can tell reuse from a reconnect per task.
connections_opened = 0


def count_connection(**kwargs: object) -> None:
    global connections_opened
    connections_opened += 1


def connection_marker(key: str, consumer: str) -> Path:
    """A file saying which process ran the task and how many connections it had opened."""
    return Path(settings.MEDIA_ROOT).parent / "probe" / f"{key}.{consumer}.connections"


def started_marker(key: str, consumer: str) -> Path:
    """A file the handler creates when it starts, so a test knows a task is mid-flight."""
    return Path(settings.MEDIA_ROOT).parent / "probe" / f"{key}.{consumer}.started"


def make_handler(consumer: str) -> TwoStepHandler:
    """A probe handler; its sleep happens in ``prepare``, outside every lock, like slow I/O."""

    def prepare(envelope: Envelope) -> None:
        marker = started_marker(envelope.payload["key"], consumer)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        time.sleep(envelope.payload.get("sleep_seconds", {}).get(consumer, 0))

    def apply(envelope: Envelope, prepared: None) -> None:
        payload = envelope.payload
        if consumer in payload.get("permanent_failures", []):
            raise PermanentError(f"probe {consumer}: refused on purpose")
        # Failed tries are counted in the ledger, which this transaction has locked.
        failed_before = Delivery.objects.get(event_id=envelope.id, consumer=consumer).attempts
        if failed_before < payload.get("transient_failures", {}).get(consumer, 0):
            raise TransientError(f"probe {consumer}: transient failure {failed_before + 1}")
        ProbeEffect.objects.create(consumer=consumer, event_id=envelope.id)
        connection_marker(payload["key"], consumer).write_text(
            f"{os.getpid()} {connections_opened}"
        )

    return TwoStepHandler(prepare=prepare, apply=apply)
