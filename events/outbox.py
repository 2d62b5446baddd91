"""The outbox: record an event with its deliveries, publish them after commit.

Publishing is split in two on purpose (Celery docs; Zulip ``queue_event_on_commit``):
``record_event`` only writes rows and schedules the publish for after commit, so a
rolled-back transaction publishes nothing; ``publish_deliveries_now`` talks to the
broker immediately and says so in its name.

A published delivery carries the **broker epoch** its message was confirmed under: a
random value kept in one Redis key, created when missing. Redis that restarts without
its data (no persistence, a failover to an empty replica) loses the key together with
the messages, so a delivery whose epoch differs from the current one has lost its
message, while one that merely waits in a long queue keeps a matching epoch and is
never published twice (``events.relay``).
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
from events.registry import consumers_for, get_consumer
from events.schemas import schemas

logger = logging.getLogger(__name__)

# What a broker that is down, slow or lost raises; anything else is a bug and is raised.
BROKER_ERRORS: tuple[type[BaseException], ...] = (KombuError, RedisError, OSError)
EPOCH_KEY = "events:broker-epoch"
# A transport without a Redis client (memory:// in a script) cannot lose data unnoticed
# by this process; its deliveries share one constant epoch.
NO_EPOCH = "-"
ORPHAN_REASON = "consumer no longer registered"


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
        [Delivery(event=event, consumer=consumer.name) for consumer in consumers_for(event_type)]
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
def publish_deliveries_now(
    deliveries: Sequence[Delivery], *, countdown: float | None = None
) -> list[int]:
    """Put one message per delivery on its consumer's queue, immediately.

    Not transactional: call it after the rows are committed and outside any
    transaction (it talks to the broker). A broker error stops it; the rest stays for
    the relay. A delivery whose consumer is no longer registered is marked dead with
    ``consumer no longer registered`` instead of stopping the others. What was sent is
    confirmed with the broker epoch (``mark_published``); returns the ids sent.
    """
    published: list[Delivery] = []
    orphans: list[Delivery] = []
    epoch = ""
    try:
        with _producer() as (producer, client):
            before = read_broker_epoch(client, create=True)
            for delivery in deliveries:
                if not _send(delivery, producer, countdown):
                    orphans.append(delivery)
                    continue
                published.append(delivery)
            # Equal before and after: every message went into the dataset that holds
            # this epoch key, and goes when it goes. Different: Redis lost its data
            # meanwhile, so the sends are left unconfirmed for the relay.
            epoch = before if read_broker_epoch(client, create=False) == before else ""
    except BROKER_ERRORS as exc:
        logger.warning(
            "broker unavailable (%s): %d of %d deliveries left in the outbox for the relay",
            exc,
            len(deliveries) - len(published) - len(orphans),
            len(deliveries),
        )
    if orphans:
        dead_letter_orphans(orphans)
    if published and epoch:
        mark_published(published, epoch=epoch)
    return [delivery.pk for delivery in published]


def _send(delivery: Delivery, producer: Any, countdown: float | None) -> bool:
    """Send ``delivery``'s message; ``False`` (nothing sent) when its consumer is gone."""
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
        countdown=countdown,
        headers=task_headers(delivery.event.correlation_id),
    )
    return True


@contextmanager
def _producer() -> Iterator[tuple[Any, Any]]:
    """A pooled producer and, on Redis, a client of the same server for the epoch key."""
    with current_app.producer_or_acquire() as producer:
        channel = producer.channel
        if hasattr(channel, "conn_or_acquire"):
            with channel.conn_or_acquire() as client:
                yield producer, client
        else:
            yield producer, None


def read_broker_epoch(client: Any, *, create: bool) -> str:
    """The broker's current epoch (created when missing and ``create``), or ``""``."""
    if client is None:
        return NO_EPOCH
    value = client.get(EPOCH_KEY)
    if value is None and create:
        client.set(EPOCH_KEY, uuid.uuid4().hex, nx=True)
        value = client.get(EPOCH_KEY)
    return value.decode() if value else ""


def current_broker_epoch() -> str:
    """The epoch the broker holds now, creating it when Redis has none (lost data)."""
    with _producer() as (_, client):
        return read_broker_epoch(client, create=True)


def mark_published(deliveries: Sequence[Delivery], *, epoch: str) -> None:
    """Record that ``deliveries`` have a message under ``epoch``, on the database clock.

    Fenced by the attempt count seen when publishing: a delivery that a worker claimed
    meanwhile is left as the worker leaves it (its own retry publish marks it). Errors
    are logged, never raised: the rows stay unconfirmed and the relay sends them again,
    a duplicate that the claim absorbs.
    """
    by_attempts: dict[int, list[int]] = defaultdict(list)
    for delivery in deliveries:
        by_attempts[delivery.attempts].append(delivery.pk)
    fence = Q()
    for attempts, ids in by_attempts.items():
        fence |= Q(pk__in=ids, attempts=attempts)
    try:
        Delivery.objects.filter(fence).update(enqueued_at=Now(), broker_epoch=epoch)
    except DatabaseError:
        logger.exception("could not mark %d deliveries published", len(deliveries))


def dead_letter_orphans(deliveries: Sequence[Delivery]) -> None:
    """Mark deliveries whose consumer is no longer registered dead, with that reason.

    They show in ``event_status``, admin and ``replay_events --dead``, from where they
    can be replayed once the consumer is back.
    """
    Delivery.objects.filter(
        pk__in=[delivery.pk for delivery in deliveries], state__in=Delivery.OPEN_STATES
    ).update(
        state=Delivery.State.DEAD,
        last_error=ORPHAN_REASON,
        retry_at=None,
        lease_expires_at=None,
        updated_at=Now(),
    )
    logger.error(
        "%d deliveries dead: %s (%s)",
        len(deliveries),
        ORPHAN_REASON,
        ", ".join(sorted({delivery.consumer for delivery in deliveries})),
    )
