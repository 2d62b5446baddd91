from __future__ import annotations

from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = "events"
    verbose_name = "Events"

    def ready(self) -> None:
        """Collect every app's ``consumer`` module, then build one Celery task per consumer.

        ``events`` is installed before the consumer apps, so their own ``ready()`` would
        run too late; importing their ``consumer`` modules here (as the admin finds
        ``admin.py``) needs only their models, which are loaded by now.
        """
        from django.utils.module_loading import autodiscover_modules

        from events.registry import all_consumers
        from events.tasks import create_consumer_task

        autodiscover_modules("consumer")
        for consumer in all_consumers():
            create_consumer_task(consumer)
