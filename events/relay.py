"""The relay: find the deliveries whose message is really lost, and publish them again.

A message is lost, and only then republished, when:

* it was **never sent**, or its send was not confirmed: the on-commit publish failed or
  never ran, a retry's publish failed, or the broker lost its data since (the delivery's
  ``broker_epoch`` differs from the broker's current epoch, ``events.outbox``). A short
  grace (``EVENTS_PUBLISH_GRACE_SECONDS``) leaves a fresh delivery to its own publisher;
  a retrying one waits until its retry is due;
* its **lease expired**: the attempt that claimed it died (SIGKILL, out of memory, a
  hard time limit, a lost host) and no message for it was sent since.

A delivery that merely waits in a queue, however long, has a confirmed message under the
current epoch and is never sent twice: a backlog does not multiply itself. Every
decision compares with the database's clock (``Now()``), never a host's.

Each pass marks its batch and commits before it talks to the broker, so no database
lock is held while it waits on Redis; on PostgreSQL ``SKIP LOCKED`` lets several relays
run at once, each taking other rows.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import dataclass

from django.conf import settings
from django.db import transaction
from django.db.models import F, Q, QuerySet
from django.db.models.functions import Now

from events.models import Delivery
from events.outbox import BROKER_ERRORS, current_broker_epoch, publish_deliveries_now
from events.registry import all_consumers

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RelayResult:
    """How many deliveries a relay pass published, and whether the broker failed."""

    published: int
    broker_failed: bool


def lost_deliveries(*, epoch: str) -> QuerySet[Delivery]:
    """Deliveries whose message is lost, given the broker's current ``epoch``."""
    grace_ago = Now() - dt.timedelta(seconds=settings.EVENTS_PUBLISH_GRACE_SECONDS)
    sent_long_ago = Q(enqueued_at__lt=grace_ago) | Q(
        enqueued_at__isnull=True, created_at__lt=grace_ago
    )
    unconfirmed = ~Q(broker_epoch=epoch) & sent_long_ago
    due = Q(retry_at__isnull=True) | Q(retry_at__lte=Now())
    waiting_lost = Q(state__in=Delivery.WAITING_STATES) & due & unconfirmed
    not_sent_since_expiry = Q(enqueued_at__isnull=True) | Q(enqueued_at__lt=F("lease_expires_at"))
    lease_lost = Q(state=Delivery.State.RUNNING, lease_expires_at__lt=Now()) & (
        not_sent_since_expiry | unconfirmed
    )
    return Delivery.objects.filter(waiting_lost | lease_lost)


def relay_outbox(*, batch_size: int | None = None) -> RelayResult:
    """Publish every delivery whose message is lost; safe to run in several places."""
    batch_size = batch_size or settings.EVENTS_RELAY_BATCH_SIZE
    try:
        epoch = current_broker_epoch()
    except BROKER_ERRORS as exc:
        logger.warning("relay: broker unavailable (%s); trying again next pass", exc)
        return RelayResult(0, broker_failed=True)
    registered = {consumer.name for consumer in all_consumers()}
    total = 0
    while True:
        batch = _take_batch(epoch=epoch, batch_size=batch_size)
        published = publish_deliveries_now(batch)
        total += len(published)
        orphans = sum(1 for delivery in batch if delivery.consumer not in registered)
        if len(published) + orphans < len(batch):
            return RelayResult(total, broker_failed=True)
        if len(batch) < batch_size:
            return RelayResult(total, broker_failed=False)


def _take_batch(*, epoch: str, batch_size: int) -> list[Delivery]:
    """Lock up to ``batch_size`` lost deliveries, mark them sent now (unconfirmed), commit.

    The mark keeps other relays off them for the grace period; the publish confirms
    it with the epoch. A relay that dies before publishing leaves them unconfirmed, so
    the next pass takes them again.
    """
    with transaction.atomic():
        batch = list(
            lost_deliveries(epoch=epoch)
            .select_for_update(skip_locked=True, of=("self",))
            .select_related("event")
            .defer("event__payload")
            .order_by("pk")[:batch_size]
        )
        if batch:
            Delivery.objects.filter(pk__in=[delivery.pk for delivery in batch]).update(
                enqueued_at=Now(), broker_epoch=""
            )
    return batch
