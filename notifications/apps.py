from django.apps import AppConfig


class NotificationsConfig(AppConfig):
    """The notifications consumer (declared in ``notifications/consumer.py``)."""

    name = "notifications"
    verbose_name = "Notifications"
