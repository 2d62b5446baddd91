"""Running one delivery: claim it with a lease, run the handler, finish or fail it.

The life of a delivery (``Delivery.State``)::

    pending ──claim──▶ running ──finish──▶ done
       ▲                  │ ╲──fail──▶ retrying ──(relay, when due)──claim──▶ running …
       │                  │  ╲─permanent, or out of attempts──▶ dead
       └─busy (uncounted)─┘

**Claim** is one short statement, committed before the handler runs: it counts the
attempt and takes a lease (the consumer's time limit plus ``EVENTS_LEASE_MARGIN_SECONDS``,
on the database clock). A crash, an out-of-memory kill or a hard time limit therefore
still uses up an attempt, and a poison message ends ``dead`` instead of looping. The
attempt number is the fence: **finish** and **fail** update the row only while it is
still ``running`` with that number, so an attempt whose lease expired and was taken
over cannot mark it done (its writes roll back with the failed fence).

A claim that finds the delivery ``done`` or ``dead`` skips it (dedupe); one that finds
a live lease skips it too (a duplicate message: the attempt holding the lease finishes
it, or its lease expires and the relay sends it again).

**No delay lives in the broker.** A failed attempt, a busy release and a wait for an
upgrade all commit ``retrying`` (or ``pending``) with ``retry_at`` and no message out
(``enqueued_at`` empty); the relay publishes it, without a countdown, once it is due. A
worker therefore never holds a message it is not running, and a killed worker strands
nothing but the attempts it was running, whose leases expire.

The attempt budget (``Consumer.max_attempts``) counts from the last redrive
(``attempts_at_redrive``): a redriven dead delivery gets every attempt again, while
``attempts`` keeps counting so that the fence and the attempt history stay unique.
"""

from __future__ import annotations

import datetime as dt
import logging
import random
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.db import connection, transaction
from django.db.models import Case, F, Q, Value, When
from django.db.models.functions import Now
from django.utils import timezone

from events import breaker
from events.breaker import CLAIM_BREAKER_ROW_SQL, CLAIM_HOLD_SQL
from events.db import (
    fetch_instance,
    instance_from_row,
    now_plus_seconds_sql,
    now_sql,
    select_columns,
)
from events.exceptions import DeliveryBusy, DependencyUnavailable, PermanentError
from events.models import ConsumerState, Delivery, DeliveryAttempt, Event
from events.registry import Consumer, Handler, TwoStepHandler, get_consumer
from events.schemas import Envelope, schemas

logger = logging.getLogger(__name__)

DID_NOT_FINISH = "the last attempt did not finish"


class NewerEventVersion(DeliveryBusy):
    """An event stored by newer code than this (a rolling deploy): wait for the upgrade."""


class LeaseLost(Exception):
    """This attempt's lease was taken over: its work must not commit."""


@dataclass(frozen=True)
class DeliveryOutcome:
    """What ``run_delivery`` did: ``done``, ``skipped``, ``retry`` (due in ``countdown`` s,
    committed for the relay to publish), ``dead``, or ``parked`` (its consumer is held:
    no attempt counted, no message out until it may run)."""

    outcome: str
    reason: str = ""
    countdown: float | None = None


@dataclass(frozen=True)
class Claim:
    """One attempt's hold on a delivery: the row as claimed and the attempt number."""

    delivery: Delivery
    consumer: Consumer
    attempt: int
    started_at: dt.datetime
    attempts_at_redrive: int = 0
    # The delivery's breaker key, and whether that breaker had a row when it was claimed
    # (only then does the end of the attempt write to it: see events.breaker).
    breaker_key: str = ""
    breaker_row: bool = False

    @property
    def budget_used(self) -> int:
        """Attempts counted against ``max_attempts``: those since the last redrive."""
        return self.attempt - self.attempts_at_redrive

    def gave_up(self, reason: str) -> str:
        """The error of a delivery whose attempt budget ran out, with ``reason``."""
        return f"{exhausted(self.attempt, self.attempts_at_redrive)}: {reason}"


def exhausted(attempts: int, attempts_at_redrive: int) -> str:
    """ "gave up after N attempts", saying when some were not counted (made before a
    redrive, or parked under an open breaker)."""
    if not attempts_at_redrive:
        return f"gave up after {attempts} attempts"
    return (
        f"gave up after {attempts - attempts_at_redrive} counted attempts ({attempts} in all; "
        "those before a redrive or under an open breaker do not count)"
    )


def run_delivery(
    *,
    delivery_id: int,
    consumer_name: str | None = None,
    task_id: str = "",
    worker: str = "",
) -> DeliveryOutcome:
    """Run one consumer's handler for one event: claim, prepare, apply and finish.

    ``consumer_name`` comes from the message (it saves a read before the claim).
    Transient errors come back as ``retry``, committed with its due time for the relay to
    publish; permanent errors and exhausted attempts as ``dead``.
    """
    consumer = _consumer_of(delivery_id, consumer_name)
    if consumer is None:
        # The event was removed (retention), or its consumer is gone: the relay
        # dead-letters such a delivery when it finds it.
        return DeliveryOutcome("skipped", "delivery or its consumer no longer exists")
    claim = claim_delivery(delivery_id=delivery_id, consumer=consumer, task_id=task_id)
    if isinstance(claim, DeliveryOutcome):
        return claim
    return run_claimed(claim, task_id=task_id, worker=worker)


def run_claimed(claim: Claim, *, task_id: str = "", worker: str = "") -> DeliveryOutcome:
    """The handler of a claimed delivery, then finish, fail or release (``run_delivery``'s rest)."""
    try:
        finish_delivery(claim, task_id=task_id, worker=worker)
    except LeaseLost as exc:
        return DeliveryOutcome("skipped", str(exc))
    except DeliveryBusy as exc:
        return release_delivery(claim, exc)
    except Exception as exc:
        return fail_delivery(
            claim, exc, permanent=isinstance(exc, PermanentError), task_id=task_id, worker=worker
        )
    return DeliveryOutcome("done")


# What a claim may take: waiting, or running with an expired lease and budget left.
CLAIMABLE = """(state IN ('pending', 'retrying')
            OR (state = 'running' AND lease_expires_at < {now}
                AND attempts - attempts_at_redrive < %s))"""
BATCH_CLAIM_SQL = f"""
    UPDATE events_delivery
       SET state = 'running', attempts = attempts + 1, lease_expires_at = {{lease}},
           retry_at = NULL, task_id = %s, updated_at = {{now}}
     WHERE id IN ({{ids}}) AND consumer = %s
       AND {CLAIMABLE}
{{hold}}
 RETURNING id, attempts, attempts_at_redrive, breaker_key, {{breaker_row}} AS breaker_row"""


def claim_batch(
    deliveries: list[Delivery], *, consumer: Consumer, task_id: str = ""
) -> list[Claim]:
    """Claim several deliveries of ``consumer`` in one committed statement (inline replay).

    Prototype (issue 17): one commit for the batch instead of one per delivery. Each
    ``Delivery`` must carry its event. Those not claimed are left out: ``run_delivery``
    says why. A crash mid-batch leaves the rest running until their leases expire and
    the relay sends them, as it does for a single crashed claim.
    """
    if not deliveries:
        return []
    started_at = timezone.now()
    sql = BATCH_CLAIM_SQL.format(
        now=now_sql(),
        lease=now_plus_seconds_sql(),
        ids=", ".join(["%s"] * len(deliveries)),
        hold=CLAIM_HOLD_SQL,
        breaker_row=CLAIM_BREAKER_ROW_SQL,
    )
    name = consumer.name
    params = [lease_seconds(consumer), task_id, *[d.pk for d in deliveries], name]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, consumer.max_attempts, name, name, name])
        claimed = {pk: rest for pk, *rest in cursor.fetchall()}
    claims = []
    for delivery in deliveries:
        if delivery.pk in claimed:
            attempts, base, breaker_key, breaker_row = claimed[delivery.pk]
            row = Delivery(
                pk=delivery.pk,
                event=delivery.event,
                consumer=consumer.name,
                state=Delivery.State.RUNNING,
                attempts=attempts,
            )
            claims.append(
                Claim(row, consumer, attempts, started_at, base, breaker_key, bool(breaker_row))
            )
    return claims


# The two statements every delivery runs, by hand: through querysets they cost several
# times as much to build as to run (bench/ledger_cost.py measures both).
CLAIM_SQL = f"""
    UPDATE events_delivery
       SET state = 'running', attempts = attempts + 1, lease_expires_at = {{lease}},
           retry_at = NULL, task_id = %s, updated_at = {{now}}{{no_flush}}
     WHERE id = %s
       AND {CLAIMABLE}
{{hold}}
 RETURNING attempts, attempts_at_redrive, event_id, breaker_key, {{breaker_row}} AS breaker_row"""
CLAIM_WITH_EVENT_SQL = """
    WITH claimed AS ({claim})
    SELECT claimed.attempts, claimed.attempts_at_redrive, claimed.event_id,
           claimed.breaker_key, claimed.breaker_row, {columns}
      FROM claimed LEFT JOIN events_event ON events_event.id = claimed.event_id"""
FINISH_SQL = """
    UPDATE events_delivery
       SET state = 'done', completed_at = {now}, lease_expires_at = NULL, retry_at = NULL,
           last_error = '', updated_at = {now}
     WHERE id = %s AND state = 'running' AND attempts = %s"""


def claim_delivery(
    *, delivery_id: int, consumer: Consumer, task_id: str
) -> Claim | DeliveryOutcome:
    """Count an attempt and take the lease, in one committed statement; or say why not.

    Pending and retrying deliveries may be claimed (their last attempt, if any, finished
    and was recorded, so a replayed dead one gets one more try even with its attempts
    used up); a running one only once its lease expired and attempts remain. None while
    its consumer is paused or its breaker is open (unless it is the breaker's probe): the
    same statement reads both, so they cost no round trip, and the delivery is parked
    instead (``_not_claimed``).
    """
    started_at = timezone.now()
    sql = CLAIM_SQL.format(
        now=now_sql(),
        lease=now_plus_seconds_sql(),
        no_flush=_no_flush(),
        hold=CLAIM_HOLD_SQL,
        breaker_row=CLAIM_BREAKER_ROW_SQL,
    )
    if connection.vendor == "postgresql":
        # One round trip: the claim and the event read together (SQLite has no UPDATE
        # in a WITH clause, and its "round trip" is a call in this process anyway).
        sql = CLAIM_WITH_EVENT_SQL.format(claim=sql, columns=select_columns(Event))
    name = consumer.name
    with connection.cursor() as cursor:
        cursor.execute(
            sql,
            [
                lease_seconds(consumer),
                task_id,
                delivery_id,
                consumer.max_attempts,
                name,
                name,
                name,
            ],
        )
        row = cursor.fetchone()
    if row is None:
        return _not_claimed(delivery_id, consumer)
    attempts, attempts_at_redrive, event_id, breaker_key, breaker_row = row[:5]
    if len(row) > 5:
        event = None if row[5] is None else instance_from_row(Event, row[5:])
    else:
        event = fetch_instance(Event, event_id)
    delivery = Delivery(
        pk=delivery_id,
        event=event,
        consumer=consumer.name,
        state=Delivery.State.RUNNING,
        attempts=attempts,
    )
    return Claim(
        delivery,
        consumer,
        attempts,
        started_at,
        attempts_at_redrive,
        breaker_key,
        bool(breaker_row),
    )


def _no_flush() -> str:
    """On PostgreSQL in autocommit, let the claim's commit return before its WAL flush.

    A claim lost in a database crash loses one attempt count; the finish's synchronous
    commit flushes it anyway. ``set_config(..., true)`` lasts for this statement's own
    transaction only, and costs no round trip of its own (unlike ``SET LOCAL``, which
    needs ``BEGIN`` and ``COMMIT`` around it). Inside a caller's transaction it would
    make that whole commit asynchronous: left out there.
    """
    if connection.vendor != "postgresql" or not connection.get_autocommit():
        return ""
    return "\n      FROM (SELECT set_config('synchronous_commit', 'off', true)) AS no_flush"


def lease_seconds(consumer: Consumer) -> float:
    """How long a claim holds: past the hard time limit, when the attempt is surely gone."""
    return consumer.time_limit + settings.EVENTS_LEASE_MARGIN_SECONDS


def _expired_and_exhausted(consumer: Consumer) -> Q:
    # Running with an expired lease (its attempt died) and no attempt left.
    return Q(
        state=Delivery.State.RUNNING,
        lease_expires_at__lt=Now(),
        attempts__gte=F("attempts_at_redrive") + consumer.max_attempts,
    )


def _not_claimed(delivery_id: int, consumer: Consumer) -> DeliveryOutcome:
    """Why a claim took nothing: gone, finished, leased elsewhere, or out of attempts."""
    row = (
        Delivery.objects.filter(pk=delivery_id).values(
            "state", "attempts", "attempts_at_redrive", "lease_expires_at", "breaker_key"
        )
    ).first()
    if row is None:
        # The event was removed (retention) after this message was sent.
        return DeliveryOutcome("skipped", "delivery no longer exists")
    if row["state"] in (Delivery.State.DONE, Delivery.State.DEAD):
        # Another message for the same delivery got here first: dedupe.
        return DeliveryOutcome("skipped", f"already {row['state']}")
    held = _held_reason(consumer, row["breaker_key"])
    if held:
        return park_delivery(delivery_id, held)
    if row["state"] in Delivery.WAITING_STATES:
        # Claimable, yet the claim refused it: it was held, and a resume or a closing
        # breaker let it go since. Parked, it is due with no message out: the relay sends it.
        return park_delivery(delivery_id, "held a moment ago")
    reason = f"{exhausted(row['attempts'], row['attempts_at_redrive'])}: {DID_NOT_FINISH}"
    gave_up = Delivery.objects.filter(
        _expired_and_exhausted(consumer), pk=delivery_id, attempts=row["attempts"]
    ).update(
        state=Delivery.State.DEAD,
        last_error=reason,
        lease_expires_at=None,
        retry_at=None,
        updated_at=Now(),
    )
    if gave_up:
        logger.error("delivery %s (%s) is dead: %s", delivery_id, consumer.name, reason)
        return DeliveryOutcome("dead", reason)
    # A live lease: the attempt holding it finishes, or its lease expires and the relay
    # publishes the delivery again. This duplicate message has nothing to do.
    return DeliveryOutcome("skipped", f"running elsewhere (lease until {row['lease_expires_at']})")


def _held_reason(consumer: Consumer, breaker_key: str) -> str:
    """Why ``consumer``'s deliveries under ``breaker_key`` may not run now, or ``""``."""
    row = ConsumerState.objects.filter(name=consumer.name, paused=True).values("paused_reason")
    paused = row.first()
    if paused is not None:
        reason = paused["paused_reason"]
        return f"consumer paused: {reason}" if reason else "consumer paused"
    if breaker.is_open(consumer=consumer.name, key=breaker_key):
        return f"breaker {breaker.describe_key(consumer.name, breaker_key)} open"
    return ""


def park_delivery(delivery_id: int, reason: str) -> DeliveryOutcome:
    """Leave a delivery that may not run now waiting with no message out, attempts untouched.

    The message that brought it is acknowledged; the relay publishes the delivery again
    once its consumer is resumed, as any due delivery with no message out. A running one
    whose attempt died (lease expired) keeps its state and loses only its message mark, so
    the relay's expired-lease step sends it again then.
    """
    waiting = Q(state__in=Delivery.WAITING_STATES)
    orphaned = Q(state=Delivery.State.RUNNING, lease_expires_at__lt=Now())
    parked = Delivery.objects.filter(waiting | orphaned, pk=delivery_id).update(
        enqueued_at=None,
        updated_at=Now(),
        # Due at once when it may run again (a fresh delivery has no due time yet).
        retry_at=Case(When(waiting & Q(retry_at__isnull=True), then=Now()), default=F("retry_at")),
    )
    if not parked:
        return DeliveryOutcome("skipped", f"running elsewhere; {reason}")
    logger.info("delivery %s parked: %s", delivery_id, reason)
    return DeliveryOutcome("parked", reason)


def finish_delivery(claim: Claim, *, task_id: str = "", worker: str = "") -> None:
    """Run the handler and mark the delivery done, in one transaction fenced by the attempt.

    A ``TwoStepHandler``'s ``prepare`` runs first, outside any transaction.
    """
    handler = _handler_for(claim.consumer, claim.delivery.event.type)
    envelope = _envelope(claim.delivery.event)
    prepared: Any = None
    if isinstance(handler, TwoStepHandler):
        prepared = handler.prepare(envelope)
    with transaction.atomic():
        if isinstance(handler, TwoStepHandler):
            handler.apply(envelope, prepared)
        else:
            handler(envelope)
        with connection.cursor() as cursor:
            cursor.execute(FINISH_SQL.format(now=now_sql()), [claim.delivery.pk, claim.attempt])
            if cursor.rowcount != 1:
                raise LeaseLost(_lease_lost(claim))
        _record_attempt(claim, DeliveryAttempt.Outcome.DONE, task_id, worker)
        if claim.breaker_row:
            breaker.record_success(consumer=claim.consumer, key=claim.breaker_key)


def fail_delivery(
    claim: Claim, error: BaseException, *, permanent: bool, task_id: str = "", worker: str = ""
) -> DeliveryOutcome:
    """Record a failed attempt: dead when ``permanent`` or out of attempts, else retrying."""
    reason = describe(error)
    # A permanent error is bad input, not a failing dependency: the breaker ignores it.
    held = not permanent and breaker.record_failure(
        consumer=claim.consumer,
        key=claim.breaker_key,
        delivery_id=claim.delivery.pk,
        dependency_down=isinstance(error, DependencyUnavailable),
    )
    if held and _parked_too_long(claim.delivery.pk):
        # Under an open breaker for a day: count this failure again, dead on the budget.
        held = False
    if held:
        # The breaker is open: park, due at once when it closes, even if this was the
        # last attempt of the budget. The outage, not the delivery, is what failed, so
        # the attempt is kept in the history but not counted against the budget: a
        # delivery probed through a long outage still has its retries when it closes.
        error_text = reason
        outcome = DeliveryOutcome("parked", f"breaker open: {reason}")
        changes: dict[str, Any] = {
            **_waiting(Delivery.State.RETRYING, 0),
            "attempts_at_redrive": F("attempts_at_redrive") + 1,
        }
    elif permanent or claim.budget_used >= claim.consumer.max_attempts:
        error_text = reason if permanent else claim.gave_up(reason)
        outcome = DeliveryOutcome("dead", error_text)
        changes = {"state": Delivery.State.DEAD, "retry_at": None}
    else:
        countdown = retry_countdown(claim.budget_used)
        error_text = reason
        outcome = DeliveryOutcome("retry", reason, countdown)
        changes = _waiting(Delivery.State.RETRYING, countdown)
    try:
        with transaction.atomic():
            _update_fenced(claim, last_error=error_text, lease_expires_at=None, **changes)
            recorded = "retry" if outcome.outcome == "parked" else outcome.outcome
            _record_attempt(claim, recorded, task_id, worker, error=error_text)
    except LeaseLost as exc:
        return DeliveryOutcome("skipped", str(exc))
    log = logger.error if outcome.outcome == "dead" else logger.warning
    log(
        "delivery %s (%s, event %s) failed, attempt %s: %s -> %s",
        claim.delivery.pk,
        claim.consumer.name,
        claim.delivery.event_id,
        claim.attempt,
        reason,
        outcome.outcome,
    )
    return outcome


def _parked_too_long(delivery_id: int) -> bool:
    """Whether the delivery is older than ``EVENTS_BREAKER_MAX_PARK_SECONDS`` (a failure
    under an open breaker: rare, so one query more)."""
    longest = dt.timedelta(seconds=settings.EVENTS_BREAKER_MAX_PARK_SECONDS)
    return Delivery.objects.filter(pk=delivery_id, created_at__lt=Now() - longest).exists()


def release_delivery(claim: Claim, busy: DeliveryBusy) -> DeliveryOutcome:
    """Give the claim back without counting the attempt; the relay sends it again when due.

    ``DeliveryBusy``: another attempt holds the work (notifications' mail claim); the
    ledger goes back to how it was. ``NewerEventVersion``: the event waits for the
    upgrade, ``retrying`` with the reason, so operators see why.
    """
    reason = describe(busy)
    changes = _waiting(
        Case(
            When(attempts=1, then=Value(Delivery.State.PENDING)),
            default=Value(Delivery.State.RETRYING),
        ),
        busy.retry_after,
    )
    if isinstance(busy, NewerEventVersion):
        changes.update(state=Delivery.State.RETRYING, last_error=reason)
    try:
        _update_fenced(claim, attempts=F("attempts") - 1, lease_expires_at=None, **changes)
    except LeaseLost as exc:
        return DeliveryOutcome("skipped", str(exc))
    logger.info("delivery %s released without counting: %s", claim.delivery.pk, reason)
    return DeliveryOutcome("retry", reason, busy.retry_after)


def _waiting(state: Any, countdown: float) -> dict[str, Any]:
    """Waiting, with no message out, until ``countdown`` s from now: the relay sends it then."""
    return {
        "state": state,
        "retry_at": Now() + dt.timedelta(seconds=countdown),
        "enqueued_at": None,
    }


def _update_fenced(claim: Claim, **changes: Any) -> None:
    """Update the delivery if this attempt still holds it; ``LeaseLost`` otherwise."""
    updated = Delivery.objects.filter(
        pk=claim.delivery.pk, state=Delivery.State.RUNNING, attempts=claim.attempt
    ).update(updated_at=Now(), **changes)
    if not updated:
        raise LeaseLost(_lease_lost(claim))


def _lease_lost(claim: Claim) -> str:
    return f"attempt {claim.attempt} lost its lease to a later attempt"


def retry_countdown(attempts: int) -> float:
    """Seconds before the next try: exponential in ``attempts``, capped, with jitter.

    Half the interval is fixed and half random ("equal jitter"), so retries of many
    deliveries that failed together spread out but none comes back at once.
    """
    base = settings.EVENTS_RETRY_BACKOFF_SECONDS
    ceiling = min(settings.EVENTS_RETRY_BACKOFF_MAX_SECONDS, base * 2 ** (attempts - 1))
    return ceiling / 2 + random.uniform(0, ceiling / 2)


def _consumer_of(delivery_id: int, consumer_name: str | None) -> Consumer | None:
    if consumer_name is None:
        consumer_name = (
            Delivery.objects.filter(pk=delivery_id).values_list("consumer", flat=True).first()
        )
        if consumer_name is None:
            return None
    try:
        return get_consumer(consumer_name)
    except LookupError:
        return None


def _handler_for(consumer: Consumer, event_type: str) -> Handler:
    handler = consumer.handlers.get(event_type)
    if handler is None:
        raise PermanentError(
            f"consumer {consumer.name!r} has no handler for event type {event_type!r}"
        )
    return handler


def _envelope(event: Event) -> Envelope:
    """The event upcast to the current version; a newer one waits for the upgrade."""
    current = schemas.current_version(event.type)
    if event.version > current:
        raise NewerEventVersion(
            f"{event.type} v{event.version} is newer than this code knows (up to v{current}): "
            "waiting for an upgrade",
            retry_after=settings.EVENTS_RETRY_BACKOFF_MAX_SECONDS,
        )
    return schemas.upcast(event.to_envelope())


def describe(error: BaseException) -> str:
    """An error as the ledger records it: its type and message, bounded."""
    text = str(error) or repr(error)
    return f"{type(error).__name__}: {text}"[:2000]


ATTEMPT_SQL = """
    INSERT INTO events_deliveryattempt
           (delivery_id, number, task_id, worker, started_at, finished_at, outcome, error)
    VALUES (%s, %s, %s, %s, %s, %s, %s, %s)"""


def _record_attempt(claim: Claim, outcome: str, task_id: str, worker: str, error: str = "") -> None:
    """One ``DeliveryAttempt`` row for this attempt (a bare INSERT, as the finish above)."""
    adapt = connection.ops.adapt_datetimefield_value
    with connection.cursor() as cursor:
        cursor.execute(
            ATTEMPT_SQL,
            [
                claim.delivery.pk,
                claim.attempt,
                task_id[:64],
                worker[:200],
                adapt(claim.started_at),
                adapt(timezone.now()),
                outcome,
                error,
            ],
        )
