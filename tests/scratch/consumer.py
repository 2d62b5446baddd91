"""The scratch consumer, declared as any consumer app declares itself."""

from __future__ import annotations

from pathlib import Path

from django.conf import settings

from events.registry import Consumer, register_consumer
from events.schemas import Envelope, EventSchema, schemas
from tests.scratch import SCRATCH_EVENT, SCRATCH_QUEUE


def effects_file() -> Path:
    """One line per handled event, outside the database, so a test counts the effects."""
    return Path(settings.SCRATCH_EFFECTS_DIR) / "effects.log"


def note_event(envelope: Envelope) -> None:
    """The visible side effect: the event id appended to the effects file."""
    path = effects_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as effects:
        effects.write(f"{envelope.id} {envelope.payload['key']}\n")


schemas.declare(EventSchema(type=SCRATCH_EVENT, version=1, fields={"key": str}))
register_consumer(
    Consumer(
        name="scratch",
        queue=SCRATCH_QUEUE,
        handlers={SCRATCH_EVENT: note_event},
        max_attempts=3,
        time_limit=10,
        soft_time_limit=8,
        concurrency=1,
    )
)
