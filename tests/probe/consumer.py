"""The probe consumers (test settings only), declared like any consumer app's."""

from events import Consumer, EventSchema, register_consumer, schemas
from tests.probe import handlers

# What a test may tell a probe handler to do, per consumer or attempt (tests/probe/handlers.py).
INSTRUCTIONS = {
    "transient_failures": dict,
    "dependency_failures": dict,
    "permanent_failures": list,
    "sleep_seconds": dict,
    "crash_attempts": dict,
    "hang_attempts": dict,
    "swallow_soft_limit": list,
    "pause_after_effect": dict,
}
for event_type in (handlers.PROBE_EVENT, handlers.FAULT_EVENT):
    schemas.declare(
        EventSchema(type=event_type, version=1, fields={"key": str}, optional=INSTRUCTIONS)
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
# Short limits, so hangs and crashes use up their attempts in a few seconds.
register_consumer(
    Consumer(
        name="probe_fault",
        queue="probe",
        handlers={handlers.FAULT_EVENT: handlers.make_handler("probe_fault")},
        max_attempts=3,
        time_limit=2,
        soft_time_limit=1,
        concurrency=2,
    )
)
