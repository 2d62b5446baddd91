"""The outbox: record an event with its deliveries, publish them after commit.

Publishing is split in two on purpose (Celery docs; Zulip ``queue_event_on_commit``):
``record_event`` only writes rows and schedules the publish for after commit, so a
rolled-back transaction publishes nothing; ``publish_deliveries_now`` talks to the
broker immediately and says so in its name. A delivery whose message is out has
``enqueued_at`` set, always after the send; whatever the broker loses afterwards, the
relay finds by comparing the queues with the ledger (``events.relay``).
"""

from __future__ import annotations

import json
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from functools import partial
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import DatabaseError, connection, transaction
from django.db.models import Q
from django.db.models.functions import Now
from django.utils import timezone
from kombu.exceptions import KombuError
from redis.exceptions import RedisError

from config.correlation import get_correlation_id, task_headers
from events.exceptions import InvalidEventError
from events.models import Delivery, Event
from events.registry import Consumer, consumers_for, get_consumer
from events.schemas import schemas

logger = logging.getLogger(__name__)

# Rows marked sent per statement: each statement is its own short write (on SQLite, the
# whole database's write lock), so uploads and claims never wait behind a big batch
# (bench/relay_lock.py).
MARK_CHUNK = 50
# What a broker that is down, slow or lost raises; anything else is a bug and is raised.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, RedisError, OSError)


# ------------------------------------------------------------------------------
# Recording
# ------------------------------------------------------------------------------
def record_event(
    *,
    event_type: str,
    aggregate_id: str | int,
    payload: Mapping[str, Any],
    actor: int | None = None,
    version: int | None = None,
    correlation_id: str = "",
) -> Event:
    """Append an event and one pending delivery per subscribed consumer; publish on commit.

    Must run inside ``transaction.atomic()`` together with the change the event
    describes: the event exists if and only if that change commits. The payload is
    validated against the declared schema here, so a producer bug fails loudly now
    rather than silently in a consumer later.
    """
    if not connection.in_atomic_block:
        raise RuntimeError("record_event() must run inside transaction.atomic()")
    version = version if version is not None else schemas.current_version(event_type)
    schemas.validate(event_type, version, payload)
    try:
        stored_payload = json.loads(json.dumps(payload))
    except (TypeError, ValueError) as exc:
        raise InvalidEventError(f"{event_type} v{version}: payload is not JSON: {exc}") from exc

    event = Event.objects.create(
        id=uuid.uuid4(),
        type=event_type,
        version=version,
        occurred_at=timezone.now(),
        aggregate_id=str(aggregate_id),
        actor=actor,
        payload=stored_payload,
        correlation_id=correlation_id or get_correlation_id(),
    )
    # Never published yet (enqueued_at NULL): the on-commit publish marks what it sent;
    # if it fails or the process dies first, the relay finds them after a short grace.
    deliveries = Delivery.objects.bulk_create(
        [
            Delivery(event=event, consumer=consumer.name, breaker_key=_breaker_key(consumer, event))
            for consumer in consumers_for(event_type)
        ]
    )
    # robust: nothing that runs after commit may undo or hide the commit (an exception
    # here would leave atomic() in the caller, which would then clean up a saved upload).
    transaction.on_commit(partial(_after_commit, event, deliveries), robust=True)
    return event


def _after_commit(event: Event, deliveries: Sequence[Delivery]) -> None:
    # Prototype (issue 17): with EVENTS_PUBLISH_IN_BACKGROUND the request pays for its
    # commit only; this process's publisher thread publishes in batches.
    if settings.EVENTS_PUBLISH_IN_BACKGROUND:
        from events import publisher

        publisher.submit(event, deliveries)
    else:
        publish_committed(event, deliveries)


def _breaker_key(consumer: Consumer, event: Event) -> str:
    """The key of the breaker ``consumer`` runs ``event``'s delivery under ("": its own)."""
    if consumer.breaker_key is None:
        return ""
    return str(consumer.breaker_key(schemas.upcast(event.to_envelope())))[:200]


def publish_committed(event: Event, deliveries: Sequence[Delivery]) -> None:
    """After commit: publish the event's deliveries.

    Never raises: whatever goes wrong here, the rows are committed and the relay
    publishes what this could not.
    """
    for delivery in deliveries:
        delivery.event = event
    try:
        publish_deliveries_now(deliveries)
    except Exception:
        logger.exception("publishing event %s after commit failed; the relay will", event.pk)


# ------------------------------------------------------------------------------
# Publishing
# ------------------------------------------------------------------------------
def publish_deliveries_now(deliveries: Sequence[Delivery]) -> list[int]:
    """Put one message per delivery on its consumer's queue, immediately, with no delay.

    Not transactional: call it after the rows are committed and outside any
    transaction (it talks to the broker). A broker error stops it; the rest stays for
    the relay. A delivery whose consumer this process does not know is left alone: the
    relay dead-letters it once no process has declared that consumer for a while
    (``events.relay``). What was sent is marked sent (``mark_published``); returns the
    ids sent.
    """
    published: list[Delivery] = []
    try:
        with current_app.producer_or_acquire() as producer:
            for delivery in deliveries:
                if _send(delivery, producer):
                    published.append(delivery)
    except BROKER_ERRORS as exc:
        logger.warning(
            "broker unavailable (%s): %d of %d deliveries left in the outbox for the relay",
            exc,
            len(deliveries) - len(published),
            len(deliveries),
        )
    if published:
        mark_published(published)
    return [delivery.pk for delivery in published]


def _send(delivery: Delivery, producer: Any) -> bool:
    """Send ``delivery``'s message; ``False`` (nothing sent) when its consumer is unknown."""
    try:
        consumer = get_consumer(delivery.consumer)
    except LookupError:
        return False
    current_app.send_task(
        consumer.task_name,
        kwargs={
            "delivery_id": delivery.pk,
            "event_id": str(delivery.event_id),
            "event_type": delivery.event.type,
        },
        queue=consumer.queue,
        producer=producer,
        headers=task_headers(delivery.event.correlation_id),
    )
    return True


@contextmanager
def broker_client() -> Iterator[Any]:
    """A Redis client of the broker's server (pooled), or ``None`` on another transport."""
    with current_app.producer_or_acquire() as producer:
        channel = producer.channel
        if hasattr(channel, "conn_or_acquire"):
            with channel.conn_or_acquire() as client:
                yield client
        else:
            yield None


def mark_published(deliveries: Sequence[Delivery]) -> None:
    """Record that ``deliveries`` have a message out, as of now on the database clock.

    Called after the send, so a message is always in the broker before its row says so
    (the relay's loss check relies on that order). Fenced by the attempt count seen
    when publishing: a delivery that a worker claimed meanwhile is left as the worker
    leaves it. Errors are logged, never raised: the rows stay unsent and the relay
    sends them again, a duplicate that the claim absorbs.
    """
    for first in range(0, len(deliveries), MARK_CHUNK):
        by_attempts: dict[int, list[int]] = defaultdict(list)
        for delivery in deliveries[first : first + MARK_CHUNK]:
            by_attempts[delivery.attempts].append(delivery.pk)
        fence = Q()
        for attempts, ids in by_attempts.items():
            fence |= Q(pk__in=ids, attempts=attempts)
        try:
            Delivery.objects.filter(fence).update(enqueued_at=Now())
        except DatabaseError:
            logger.exception("could not mark %d deliveries published", len(deliveries))
            return
