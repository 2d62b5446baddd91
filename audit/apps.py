from django.apps import AppConfig


class AuditConfig(AppConfig):
    name = "audit"
    verbose_name = "Audit log"

    def ready(self) -> None:
        from audit import handlers
        from audit.services import AUDIT_CONSUMER
        from events.registry import Consumer, register_consumer
        from uploads.events import FILE_DELETED, FILE_UPLOADED

        register_consumer(
            Consumer(
                name=AUDIT_CONSUMER,
                queue="audit",
                handlers={FILE_UPLOADED: handlers.record, FILE_DELETED: handlers.record},
                # Concurrent appends that lose the race for the chain head retry quickly.
                max_attempts=12,
            )
        )
