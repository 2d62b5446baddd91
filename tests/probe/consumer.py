"""The probe consumers (test settings only), declared like any consumer app's."""

from events.registry import Consumer, register_consumer
from events.schemas import EventSchema, schemas
from tests.probe import handlers

schemas.declare(
    EventSchema(
        type=handlers.PROBE_EVENT,
        version=1,
        fields={"key": str},
        optional={
            "transient_failures": dict,
            "permanent_failures": list,
            "sleep_seconds": dict,
        },
    )
)

for name in ("probe", "probe_peer"):
    register_consumer(
        Consumer(
            name=name,
            queue="probe",
            handlers={handlers.PROBE_EVENT: handlers.make_handler(name)},
            max_attempts=4,
            time_limit=5,
            soft_time_limit=4,
            concurrency=2,
        )
    )
