"""Thin Celery adapters: each takes ids and calls a service."""

from __future__ import annotations

from celery import Task, shared_task
from celery.utils.log import get_task_logger

from events import delivery, relay
from events.registry import Consumer

logger = get_task_logger(__name__)


def create_consumer_task(consumer: Consumer) -> Task:
    """Create ``<consumer>.handle_event``: run one delivery.

    The arguments are ids only (``event_id`` and ``event_type`` are there for Flower);
    the ledger, not Celery's retry counter, counts attempts (at the claim), so a relayed
    or replayed message keeps counting where the last one stopped. A retry publishes
    nothing: it is committed with its due time, and the relay sends it then.
    """

    @shared_task(
        name=consumer.task_name,
        bind=True,
        queue=consumer.queue,
        acks_late=True,
        reject_on_worker_lost=True,
        ignore_result=True,
        time_limit=consumer.time_limit,
        soft_time_limit=consumer.soft_time_limit,
    )
    def handle_event(self: Task, delivery_id: int, event_id: str = "", event_type: str = "") -> str:
        return delivery.run_delivery(
            delivery_id=delivery_id,
            consumer_name=consumer.name,
            task_id=self.request.id or "",
            worker=self.request.hostname or "",
        ).outcome

    handle_event.__doc__ = f"Deliver one event to the {consumer.name} consumer."
    return handle_event


@shared_task(name="events.relay_outbox", ignore_result=True)
def relay_outbox() -> int:
    """Beat task: publish the deliveries whose message is lost (``events.relay``)."""
    result = relay.relay_outbox()
    if result.published or result.broker_failed:
        logger.info(
            "relay published %d deliveries%s",
            result.published,
            " (broker failed; rest left for the next pass)" if result.broker_failed else "",
        )
    return result.published
