"""Celery tasks of the webhooks app: thin, they load a row and call a service.

The event calls themselves are kernel deliveries (``webhooks/consumer.py``); only the
test ping, which needs no ledger and no retry, is a plain task. It runs on the calls'
queue, so a page never waits on a receiver.
"""

from __future__ import annotations

from celery import shared_task

from webhooks import services
from webhooks.models import Endpoint


@shared_task(name="webhooks.send_ping", ignore_result=True)
def send_ping(endpoint_id: int) -> None:
    """Ping the endpoint if it still exists; the call log shows the result."""
    endpoint = Endpoint.objects.filter(pk=endpoint_id).first()
    if endpoint is not None:
        services.send_ping(endpoint=endpoint)
