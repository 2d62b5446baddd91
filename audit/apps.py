from django.apps import AppConfig


class AuditConfig(AppConfig):
    """The audit consumer (declared in ``audit/consumer.py``)."""

    name = "audit"
    verbose_name = "Audit log"
