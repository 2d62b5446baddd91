"""Test helpers for consumer authors: run handlers through the real claim and finish.

A handler test should exercise what production runs: the claim that counts the attempt,
the handler inside the transaction that marks the delivery done, the fenced finish, and
the retry or dead-letter bookkeeping when it raises. These helpers do exactly that in the
test's own process and database connection, with no broker and no worker (as
``Oban.Testing.perform_job`` and ``drain_queue`` do)::

    from events.testing import deliver, drain

    def test_upload_is_indexed(db, user):
        outcome = deliver("file.uploaded", payload, consumer="indexing", aggregate_id=7)
        assert outcome.outcome == "done"

    def test_each_upload_mails_its_owner_once(db, user):
        create_upload(owner=user, file=...)
        assert [o.outcome for o in drain("notifications")] == ["done"]

Tests that claim delivery across processes (a real worker on a real Redis) use the
project's ``live_worker`` fixture instead; these helpers are for handler logic.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.db import transaction

from events.delivery import DeliveryOutcome, run_delivery
from events.models import Delivery, Event
from events.outbox import record_event
from events.registry import Consumer, get_consumer

__all__ = ["DeliveryOutcome", "deliver", "drain", "waiting_deliveries"]

# A drain gives up after this many passes, so a handler that always asks to be retried
# (DeliveryBusy) fails the test instead of looping.
MAX_DRAIN_PASSES = 50


def deliver(
    event_type: str,
    payload: Mapping[str, Any],
    *,
    consumer: str | Consumer,
    aggregate_id: str | int = "1",
    actor: int | None = None,
    version: int | None = None,
) -> DeliveryOutcome:
    """Record an event (schema-checked, as a producer would) and deliver it to ``consumer`` once.

    Runs one attempt through ``run_delivery``: ``done``, ``retry`` (the handler raised a
    transient error; the ledger now says ``retrying``), ``dead`` (a permanent error, or
    attempts used up) or ``skipped``. Raises ``LookupError`` when ``consumer`` does not
    subscribe to ``event_type``.
    """
    name = _name(consumer)
    with transaction.atomic():
        event = record_event(
            event_type=event_type,
            aggregate_id=aggregate_id,
            payload=payload,
            actor=actor,
            version=version,
        )
    delivery = Delivery.objects.filter(event=event, consumer=name).first()
    if delivery is None:
        raise LookupError(f"consumer {name!r} does not subscribe to {event_type!r}")
    return run_delivery(delivery_id=delivery.pk, consumer_name=name, worker="events.testing")


def drain(consumer: str | Consumer, *, with_retries: bool = False) -> list[DeliveryOutcome]:
    """Run every waiting delivery of ``consumer`` in-process, oldest event first.

    Each pending or retrying delivery runs once. With ``with_retries`` the drain goes on running
    deliveries left ``retrying`` (without waiting for their ``retry_at``) until none is
    waiting, so a handler that fails twice then succeeds ends ``done`` after three
    attempts, and one that always fails ends ``dead`` at its consumer's ``max_attempts``.
    Returns every outcome, in the order the attempts ran.
    """
    name = _name(consumer)
    get_consumer(name)  # an unknown name fails here, listing the known ones
    outcomes: list[DeliveryOutcome] = []
    for _ in range(MAX_DRAIN_PASSES):
        ids = list(
            Delivery.objects.filter(
                consumer=name, state__in=[Delivery.State.PENDING, Delivery.State.RETRYING]
            )
            .order_by("event__occurred_at", "pk")
            .values_list("pk", flat=True)
        )
        if not ids:
            return outcomes
        for delivery_id in ids:
            outcomes.append(
                run_delivery(delivery_id=delivery_id, consumer_name=name, worker="events.testing")
            )
        if not with_retries:
            return outcomes
    raise AssertionError(
        f"drain({name!r}) still had deliveries waiting after {MAX_DRAIN_PASSES} passes"
    )


def waiting_deliveries(consumer: str | Consumer, *, event: Event | None = None) -> list[Delivery]:
    """``consumer``'s deliveries that are neither done nor dead (optionally of one event)."""
    rows = Delivery.objects.filter(consumer=_name(consumer)).exclude(
        state__in=[Delivery.State.DONE, Delivery.State.DEAD]
    )
    if event is not None:
        rows = rows.filter(event=event)
    return list(rows.order_by("pk"))


def _name(consumer: str | Consumer) -> str:
    return consumer if isinstance(consumer, str) else consumer.name
