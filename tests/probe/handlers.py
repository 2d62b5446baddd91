"""Handlers whose behaviour the event payload dictates, to inject faults into a real worker.

The payload's instructions, each keyed by consumer name:

* ``transient_failures``: raise ``TransientError`` on the first N attempts;
* ``dependency_failures``: raise ``DependencyUnavailable`` on the first N attempts;
* ``permanent_failures`` (a list of consumers): raise ``PermanentError``;
* ``sleep_seconds``: sleep that long in ``prepare``, outside every lock, like slow I/O;
* ``crash_attempts``: on the first N attempts, kill the process (``os._exit``) after the
  effect was written and before it commits, as an out-of-memory kill or a segfault would;
* ``hang_attempts``: on the first N attempts, sleep past the hard time limit;
* ``swallow_soft_limit`` (a list): catch the soft time limit and keep hanging;
* ``pause_after_effect``: after writing the effect and before it commits, create the
  effect marker and sleep that long, so a test can kill the worker right there.

Every attempt appends a line to an attempts file outside the database, so a test can
count attempts that died before they could record anything.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from events import (
    DependencyUnavailable,
    Envelope,
    PermanentError,
    TransientError,
    TwoStepHandler,
)
from events.models import Delivery
from tests.probe.models import ProbeEffect

PROBE_EVENT = "test.probe"
# Only the fault consumer handles it, so fault tests leave the probe consumers alone.
FAULT_EVENT = "test.fault"


# Database connections this process has opened, counted by the ``connection_created``
# signal (tests.probe.apps), so a test can tell reuse from a reconnect per task.
connections_opened = 0


def count_connection(**kwargs: object) -> None:
    global connections_opened
    connections_opened += 1


def probe_dir() -> Path:
    return Path(settings.MEDIA_ROOT).parent / "probe"


def connection_marker(key: str, consumer: str) -> Path:
    """A file saying which process ran the task and how many connections it had opened."""
    return probe_dir() / f"{key}.{consumer}.connections"


def started_marker(key: str, consumer: str) -> Path:
    """A file the handler creates when it starts, so a test knows a task is mid-flight."""
    return probe_dir() / f"{key}.{consumer}.started"


def effect_marker(key: str, consumer: str) -> Path:
    """Created once the effect is written and not yet committed (``pause_after_effect``)."""
    return probe_dir() / f"{key}.{consumer}.effect"


def attempts_file(key: str, consumer: str) -> Path:
    """One line per attempt that reached the handler, written before anything can fail."""
    return probe_dir() / f"{key}.{consumer}.attempts"


def attempts_seen(key: str, consumer: str) -> int:
    path = attempts_file(key, consumer)
    return len(path.read_text().splitlines()) if path.exists() else 0


def make_handler(consumer: str) -> TwoStepHandler:
    """A probe handler; its sleep and hang happen in ``prepare``, outside every lock."""

    def prepare(envelope: Envelope) -> int:
        payload = envelope.payload
        attempt = _attempt(envelope, consumer)
        marker = started_marker(payload["key"], consumer)
        marker.parent.mkdir(parents=True, exist_ok=True)
        marker.touch()
        with attempts_file(payload["key"], consumer).open("a") as attempts:
            attempts.write(f"{attempt} {os.getpid()}\n")
        time.sleep(_for(payload, "sleep_seconds", consumer, 0))
        if attempt <= _for(payload, "hang_attempts", consumer, 0):
            _hang(swallow_soft_limit=consumer in payload.get("swallow_soft_limit", []))
        return attempt

    def apply(envelope: Envelope, attempt: int) -> None:
        payload = envelope.payload
        if consumer in payload.get("permanent_failures", []):
            raise PermanentError(f"probe {consumer}: refused on purpose")
        if attempt <= _for(payload, "transient_failures", consumer, 0):
            raise TransientError(f"probe {consumer}: transient failure {attempt}")
        if attempt <= _for(payload, "dependency_failures", consumer, 0):
            raise DependencyUnavailable(f"probe {consumer}: dependency down {attempt}")
        ProbeEffect.objects.create(consumer=consumer, event_id=envelope.id)
        if attempt <= _for(payload, "crash_attempts", consumer, 0):
            os._exit(1)  # the effect is written but not committed: it must roll back
        pause = _for(payload, "pause_after_effect", consumer, 0)
        if pause:
            effect_marker(payload["key"], consumer).touch()
            time.sleep(pause)
        connection_marker(payload["key"], consumer).write_text(
            f"{os.getpid()} {connections_opened}"
        )

    return TwoStepHandler(prepare=prepare, apply=apply)


def _attempt(envelope: Envelope, consumer: str) -> int:
    """This attempt's number: counted by the claim before the handler runs."""
    return Delivery.objects.get(event_id=envelope.id, consumer=consumer).attempts


def _for(payload: dict[str, Any] | Any, instruction: str, consumer: str, default: Any) -> Any:
    return payload.get(instruction, {}).get(consumer, default)


def _hang(*, swallow_soft_limit: bool) -> None:
    """Sleep until the hard time limit kills the process."""
    while True:
        try:
            time.sleep(60)
        except SoftTimeLimitExceeded:
            if not swallow_soft_limit:
                raise
