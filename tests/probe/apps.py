from django.apps import AppConfig


class ProbeConfig(AppConfig):
    """Test-only consumers that fail, sleep or succeed on command, inside a real worker."""

    name = "tests.probe"
    label = "probe"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

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
        connection_created.connect(handlers.count_connection)
        for name in ("probe", "probe_peer"):
            register_consumer(
                Consumer(
                    name=name,
                    queue="probe",
                    handlers={handlers.PROBE_EVENT: handlers.make_handler(name)},
                    max_attempts=4,
                    time_limit=5,
                    soft_time_limit=4,
                )
            )
