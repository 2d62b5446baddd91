from django.apps import AppConfig


class ProbeConfig(AppConfig):
    """Test-only consumers that fail, sleep or succeed on command, inside a real worker.

    The consumers themselves are declared in ``tests/probe/consumer.py``.
    """

    name = "tests.probe"
    label = "probe"

    def ready(self) -> None:
        from django.db.backends.signals import connection_created

        from tests.probe import handlers

        connection_created.connect(handlers.count_connection)
