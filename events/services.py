"""The delivery path: append to the outbox, publish on commit, run a delivery, relay.

Publishing is split in two on purpose (Celery docs; Zulip ``queue_event_on_commit``):
``record_event`` only writes rows and schedules the publish for after commit, so a
rolled-back transaction publishes nothing; ``publish_deliveries_now`` talks to the
broker immediately and says so in its name.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import random
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from celery import current_app
from django.conf import settings
from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from events.correlation import get_correlation_id, task_headers
from events.db import one_or_none
from events.exceptions import DeliveryBusy, InvalidEventError, PermanentError
from events.models import Delivery, DeliveryAttempt, Event
from events.registry import Handler, TwoStepHandler, consumers_for, get_consumer
from events.schemas import schemas
from events.signals import event_committed

logger = logging.getLogger(__name__)

# A delivery created this recently is left to its own on-commit publish by the relay.
NEW_DELIVERY_GRACE = dt.timedelta(seconds=2)


# ------------------------------------------------------------------------------
# Producing
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
    # Marked enqueued up front: the on-commit publish clears the mark of what it could
    # not publish, which saves a write transaction per event on the request path. A crash
    # between commit and publish leaves the mark; the relay republishes once it is stale.
    enqueued_at = timezone.now()
    deliveries = Delivery.objects.bulk_create(
        [
            Delivery(event=event, consumer=consumer.name, enqueued_at=enqueued_at)
            for consumer in consumers_for(event_type)
        ]
    )
    transaction.on_commit(partial(_after_commit, event, deliveries))
    return event


def _after_commit(event: Event, deliveries: Sequence[Delivery]) -> None:
    try:
        event_committed.send_robust(sender=Event, envelope=event.to_envelope())
    finally:
        publish_deliveries_now(deliveries, marked_enqueued=True)


def publish_deliveries_now(
    deliveries: Sequence[Delivery], *, marked_enqueued: bool = False
) -> list[int]:
    """Put one message per delivery on its consumer's queue, immediately.

    Not transactional: call it after the rows are committed (or accept duplicates,
    which the ledger absorbs). Stops at the first broker error, logs it and leaves the
    rest for the relay. Marks what it published as enqueued (or, when the rows were
    ``marked_enqueued`` in advance, unmarks what it could not publish) and returns the
    ids it published.
    """
    published: list[int] = []
    try:
        with current_app.producer_or_acquire() as producer:
            for delivery in deliveries:
                consumer = get_consumer(delivery.consumer)
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
                published.append(delivery.pk)
    except Exception as exc:
        logger.warning(
            "broker unavailable (%s): %d of %d deliveries left in the outbox for the relay",
            exc,
            len(deliveries) - len(published),
            len(deliveries),
        )
    if marked_enqueued:
        unpublished = [delivery.pk for delivery in deliveries if delivery.pk not in set(published)]
        if unpublished:
            Delivery.objects.filter(pk__in=unpublished, state__in=Delivery.OPEN_STATES).update(
                enqueued_at=None
            )
    elif published:
        Delivery.objects.filter(pk__in=published).update(enqueued_at=timezone.now(), retry_at=None)
    return published


# ------------------------------------------------------------------------------
# Consuming
# ------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeliveryOutcome:
    """What ``run_delivery`` did: ``done``, ``skipped``, ``retry`` (after ``countdown`` s) or ``dead``."""

    outcome: str
    reason: str = ""
    countdown: float | None = None


def run_delivery(
    *,
    delivery_id: int,
    consumer_name: str | None = None,
    event_type: str | None = None,
    task_id: str = "",
    worker: str = "",
) -> DeliveryOutcome:
    """Run one consumer's handler for one event, at most once to completion.

    Locks the delivery row, skips it when it is already done or dead (a redelivered
    or duplicate message), runs the handler and marks the delivery done in the same
    transaction as the handler's own writes. A failure rolls all of that back and is
    recorded in a second transaction: dead when permanent or out of attempts,
    otherwise retrying with a backoff countdown for the caller to schedule.

    ``consumer_name`` and ``event_type`` (from the message) let a ``TwoStepHandler``
    prepare before the lock is taken; they are checked against the row under the lock.
    """
    started_at = timezone.now()
    try:
        prepared = _prepare(delivery_id, consumer_name, event_type)
        if isinstance(prepared, DeliveryOutcome):
            return prepared
        with transaction.atomic():
            delivery = _lock_delivery(delivery_id)
            if delivery is None:
                # The event was removed (retention) after this message was sent.
                return DeliveryOutcome("skipped", "delivery no longer exists")
            if delivery.state not in Delivery.OPEN_STATES:
                # Another message for the same delivery got here first: dedupe.
                return DeliveryOutcome("skipped", f"already {delivery.state}")
            handler = _handler_for(delivery.consumer, delivery.event.type)
            envelope = schemas.upcast(delivery.event.to_envelope())
            if isinstance(handler, TwoStepHandler):
                if prepared is _NOT_PREPARED:
                    prepared = handler.prepare(envelope)
                handler.apply(envelope, prepared)
            else:
                handler(envelope)
            delivery.state = Delivery.State.DONE
            delivery.attempts += 1
            delivery.completed_at = timezone.now()
            delivery.retry_at = None
            delivery.last_error = ""
            delivery.task_id = task_id
            delivery.save(
                update_fields=[
                    "state",
                    "attempts",
                    "completed_at",
                    "retry_at",
                    "last_error",
                    "task_id",
                    "updated_at",
                ]
            )
            _record_attempt(delivery, DeliveryAttempt.Outcome.DONE, task_id, worker, started_at)
        return DeliveryOutcome("done")
    except DeliveryBusy as exc:
        # A duplicate message racing the attempt that holds the work: look again later,
        # leaving the ledger as the other attempt will leave it.
        logger.info("delivery %s is busy elsewhere: %s", delivery_id, exc)
        return DeliveryOutcome("retry", _describe(exc), exc.retry_after)
    except PermanentError as exc:
        return record_failure(
            delivery_id=delivery_id,
            error=exc,
            permanent=True,
            task_id=task_id,
            worker=worker,
            started_at=started_at,
        )
    except Exception as exc:
        return record_failure(
            delivery_id=delivery_id,
            error=exc,
            permanent=False,
            task_id=task_id,
            worker=worker,
            started_at=started_at,
        )


_NOT_PREPARED = object()


def _prepare(delivery_id: int, consumer_name: str | None, event_type: str | None) -> Any:
    """Run a two-step handler's ``prepare`` before any lock; skip finished deliveries."""
    if consumer_name is None or event_type is None:
        return _NOT_PREPARED
    try:
        handler = _handler_for(consumer_name, event_type)
    except PermanentError:
        return _NOT_PREPARED  # reported under the lock, with the row at hand
    if not isinstance(handler, TwoStepHandler):
        return _NOT_PREPARED
    delivery = one_or_none(Delivery.objects.select_related("event").filter(pk=delivery_id))
    if delivery is None or delivery.state not in Delivery.OPEN_STATES:
        return DeliveryOutcome(
            "skipped", "already finished" if delivery else "delivery no longer exists"
        )
    return handler.prepare(schemas.upcast(delivery.event.to_envelope()))


def record_failure(
    *,
    delivery_id: int,
    error: BaseException,
    permanent: bool,
    task_id: str = "",
    worker: str = "",
    started_at: dt.datetime | None = None,
) -> DeliveryOutcome:
    """Count a failed try: dead when ``permanent`` or out of attempts, else retrying."""
    reason = _describe(error)
    with transaction.atomic():
        delivery = _lock_delivery(delivery_id)
        if delivery is None or delivery.state not in Delivery.OPEN_STATES:
            return DeliveryOutcome("skipped", reason)
        delivery.attempts += 1
        delivery.task_id = task_id
        max_attempts = _max_attempts(delivery.consumer)
        if permanent or delivery.attempts >= max_attempts:
            delivery.state = Delivery.State.DEAD
            delivery.retry_at = None
            delivery.last_error = (
                reason if permanent else f"gave up after {delivery.attempts} attempts: {reason}"
            )
            outcome = DeliveryOutcome("dead", delivery.last_error)
        else:
            countdown = retry_countdown(delivery.attempts)
            delivery.state = Delivery.State.RETRYING
            delivery.retry_at = timezone.now() + dt.timedelta(seconds=countdown)
            delivery.last_error = reason
            outcome = DeliveryOutcome("retry", reason, countdown)
        delivery.save(
            update_fields=["state", "attempts", "retry_at", "last_error", "task_id", "updated_at"]
        )
        _record_attempt(
            delivery,
            DeliveryAttempt.Outcome.DEAD
            if outcome.outcome == "dead"
            else DeliveryAttempt.Outcome.RETRY,
            task_id,
            worker,
            started_at or timezone.now(),
            error=delivery.last_error,
        )
    log = logger.error if outcome.outcome == "dead" else logger.warning
    log(
        "delivery %s (%s, event %s) failed, attempt %s: %s -> %s",
        delivery.pk,
        delivery.consumer,
        delivery.event_id,
        delivery.attempts,
        reason,
        outcome.outcome,
    )
    return outcome


def retry_countdown(attempts: int) -> float:
    """Seconds before the next try: exponential in ``attempts``, capped, with jitter.

    Half the interval is fixed and half random ("equal jitter"), so retries of many
    deliveries that failed together spread out but none comes back at once.
    """
    base = settings.EVENTS_RETRY_BACKOFF_SECONDS
    ceiling = min(settings.EVENTS_RETRY_BACKOFF_MAX_SECONDS, base * 2 ** (attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _lock_delivery(delivery_id: int) -> Delivery | None:
    return one_or_none(
        Delivery.objects.select_for_update(of=("self",))
        .select_related("event")
        .filter(pk=delivery_id)
    )


def _handler_for(consumer_name: str, event_type: str) -> Handler:
    try:
        consumer = get_consumer(consumer_name)
    except LookupError as exc:
        raise PermanentError(str(exc)) from None
    handler = consumer.handlers.get(event_type)
    if handler is None:
        raise PermanentError(
            f"consumer {consumer.name!r} has no handler for event type {event_type!r}"
        )
    return handler


def _max_attempts(consumer_name: str) -> int:
    try:
        return get_consumer(consumer_name).max_attempts
    except LookupError:
        return 1


def _describe(error: BaseException) -> str:
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"[:2000]


def _record_attempt(
    delivery: Delivery,
    outcome: str,
    task_id: str,
    worker: str,
    started_at: dt.datetime,
    error: str = "",
) -> None:
    DeliveryAttempt.objects.create(
        delivery=delivery,
        number=delivery.attempts,
        task_id=task_id,
        worker=worker,
        started_at=started_at,
        finished_at=timezone.now(),
        outcome=outcome,
        error=error,
    )


# ------------------------------------------------------------------------------
# Relay
# ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RelayResult:
    """How many deliveries a relay pass published, and whether the broker failed."""

    published: int
    broker_failed: bool


def deliveries_to_relay(now: dt.datetime | None = None) -> QuerySet[Delivery]:
    """Open deliveries never enqueued, or enqueued (or due to retry) too long ago.

    Stale means longer ago than ``EVENTS_STALE_AFTER_SECONDS``: above every task time
    limit, far below the broker's visibility timeout. A worker killed with SIGKILL
    leaves its messages unacknowledged until that timeout; this picks them up sooner.
    """
    now = now or timezone.now()
    cutoff = now - dt.timedelta(seconds=settings.EVENTS_STALE_AFTER_SECONDS)
    never_enqueued = Q(enqueued_at__isnull=True, created_at__lt=now - NEW_DELIVERY_GRACE)
    stale = Q(retry_at__isnull=True, enqueued_at__lt=cutoff) | Q(retry_at__lt=cutoff)
    return Delivery.objects.filter(state__in=Delivery.OPEN_STATES).filter(never_enqueued | stale)


def relay_outbox(*, batch_size: int | None = None) -> RelayResult:
    """Publish every delivery the outbox still holds; safe to run in several places.

    Each batch is locked with ``SKIP LOCKED`` on PostgreSQL, so concurrent relays take
    different rows; on SQLite the immediate transaction serializes them.
    """
    batch_size = batch_size or settings.EVENTS_RELAY_BATCH_SIZE
    total = 0
    while True:
        with transaction.atomic():
            batch = list(
                deliveries_to_relay()
                .select_for_update(skip_locked=True, of=("self",))
                .select_related("event")
                .order_by("pk")[:batch_size]
            )
            published = publish_deliveries_now(batch)
        total += len(published)
        if len(published) < len(batch):
            return RelayResult(total, broker_failed=True)
        if len(batch) < batch_size:
            return RelayResult(total, broker_failed=False)
