from django.apps import AppConfig


class WebhooksConfig(AppConfig):
    """The webhooks consumer (declared in ``webhooks/consumer.py``): signed POSTs to owners' endpoints."""

    name = "webhooks"
    verbose_name = "Webhooks"
